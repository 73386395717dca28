"""Minimiser: the structural reductions (pure), then real findings of planted bugs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from raw_scenarios import parse_raw, raw_text

from bpfdiff.asm import assemble
from bpfdiff.isa import InvalidInstruction, Program, check_program, jump_target
from bpfdiff.scenario import PROG_RAW, Delete, Run, Scenario
from bpfdiff.scenario_text import parse_scenario

from bpfdiff.fuzz.minimize import (  # isort: skip
    Minimizer,
    ddmin,
    instruction_units,
    rewrite_program,
    simpler_ints,
)

REPO = Path(__file__).resolve().parent.parent


def prog(text: str) -> list:
    return list(assemble(text, source="<test>"))


# -- ddmin ---------------------------------------------------------------------
def test_ddmin_finds_the_two_needed_items_among_many() -> None:
    calls = []

    def test(items: list[int]) -> bool:
        calls.append(tuple(items))
        return 3 in items and 17 in items

    assert ddmin(list(range(40)), test) == [3, 17]
    assert len(calls) < 120          # logarithmic-ish, not 2**40


def test_ddmin_result_is_one_minimal() -> None:
    def test(items: list[int]) -> bool:
        return sum(items) >= 10

    result = ddmin([1, 2, 3, 4, 5, 6], test)
    assert sum(result) >= 10
    for i in range(len(result)):
        assert sum(result[:i] + result[i + 1:]) < 10


# -- program surgery -------------------------------------------------------------
BRANCHY = """
    mov %r0, 0
    lddw %r1, 0x1122334455667788
    jeq %r1, 5, skip
    add %r0, 1
    add %r0, 2
skip:
    call local func
    exit
func:
    mov %r0, 7
    exit
"""


def _targets(insns: list) -> dict[int, int]:
    return {pc: t for pc, i in enumerate(insns) if (t := jump_target(pc, i)) is not None}


def test_rewrite_program_keeps_branch_targets_when_deleting() -> None:
    insns = prog(BRANCHY)
    check_program(insns)
    # Delete the two adds (pcs 4 and 5): the jeq must still land on `call local`,
    # and `call local` must still reach `mov %r0, 7`.
    new = rewrite_program(insns, {4: (), 5: ()})
    assert new is not None
    check_program(new)
    targets = _targets(new)
    jeq_pc = next(pc for pc, i in enumerate(new) if i.opcode == 0x15)
    call_pc = next(pc for pc, i in enumerate(new) if i.is_pseudo_call)
    assert new[targets[jeq_pc]].is_pseudo_call
    assert new[targets[call_pc]].imm == 7 and new[targets[call_pc]].dst == 0
    assert len(new) == len(insns) - 2


def test_rewrite_program_retargets_jumps_into_a_deleted_instruction() -> None:
    insns = prog(BRANCHY)
    call_pc = next(pc for pc, i in enumerate(insns) if i.is_pseudo_call)
    new = rewrite_program(insns, {call_pc: ()})
    assert new is not None
    jeq_pc = next(pc for pc, i in enumerate(new) if i.opcode == 0x15)
    # The jump's target was deleted: it now lands on the instruction that followed it.
    assert new[_targets(new)[jeq_pc]].is_exit


def test_instruction_units_never_split_lddw() -> None:
    insns = prog(BRANCHY)
    units = instruction_units(insns)
    assert (1, 2) in units
    assert all(start != 2 for start, _ in units)


def test_lddw_shrinks_to_mov_when_the_constant_fits() -> None:
    scenario = parse_raw("""
-- prog p
lddw %r0, 5
exit
-- events
run p
""")

    def test(s: Scenario) -> bool:
        try:
            check_program(s.program("p").insns)
        except (InvalidInstruction, KeyError):
            return False
        insns = s.program("p").insns
        return len(insns) >= 2 and insns[0].dst == 0 and insns[-1].is_exit and bool(s.events)

    result = Minimizer(scenario, test).run()
    assert result.end_size == (2, 1)
    assert not result.scenario.program("p").insns[0].is_lddw


def test_simpler_ints_are_strictly_simpler() -> None:
    for value in (0, 1, -1, 2, 7, -8, 1 << 31, -(1 << 31), 33):
        for candidate in simpler_ints(value):
            assert (abs(candidate), candidate < 0) < (abs(value), value < 0)
    assert simpler_ints(0) == []


def test_minimizer_with_a_structural_predicate_reaches_a_fixpoint() -> None:
    """A made-up 'bug': main must contain a 64-bit div by register, and a delete must happen."""
    scenario = parse_raw("""
-- maps
pa prog_array key_size=4 value_size=4 max_entries=8
-- prog main
mov %r0, 5
lddw %r1, 0x1234
jeq %r1, 7, out
mov %r2, 9
add %r0, %r2
mov %r4, 3
div %r0, %r4
mov %r5, 1
out:
exit
-- prog other
mov %r0, 1
exit
-- events
update pa 3 prog:other
run main mem=61 62 63 64
delete pa 3
run other
run main
""")

    def test(s: Scenario) -> bool:
        try:
            main = s.program("main").insns
            check_program(main)
        except (InvalidInstruction, KeyError):
            return False
        has_div = any(i.opcode == 0x3F for i in main)
        return has_div and main[-1].is_exit and any(isinstance(e, Delete) for e in s.events)

    result = Minimizer(scenario, test).run()
    best = result.scenario
    assert result.end_size == (2, 1)
    assert [p.name for p in best.programs] == ["main"]
    assert best.maps[0].max_entries == 1                    # shrunk prog array
    assert best.events == (Delete("pa", b"\0\0\0\0"),)      # key simplified 3 -> 0
    assert best.program("main").insns[0].opcode == 0x3F and best.program("main").insns[0].src == 0
    assert result.cache_hits > 0


def test_minimizer_rejects_an_input_that_is_not_interesting() -> None:
    scenario = Scenario(prog_type=PROG_RAW, programs=(Program("p", tuple(prog("mov %r0, 0\nexit"))),),
                        events=(Run("p"),))
    with pytest.raises(ValueError):
        Minimizer(scenario, lambda s: False).run()


def test_time_budget_returns_best_so_far() -> None:
    scenario = Scenario(prog_type=PROG_RAW, programs=(Program("p", tuple(prog("mov %r0, 0\nmov %r1, 1\nexit"))),),
                        events=(Run("p"), Run("p")))

    def slow(s: Scenario) -> bool:
        time.sleep(0.05)
        return bool(s.events) and bool(s.programs)

    result = Minimizer(scenario, slow, time_budget=0.12).run()
    assert result.timed_out
    assert result.scenario.size() <= scenario.size()


# -- real findings of planted bugs -------------------------------------------------
@pytest.fixture
def oracle():
    """The oracle module."""
    import bpfdiff.fuzz.oracle as module

    return module

# Hand-made findings, each with noise around the core that shows the bug: extra
# programs, extra events, dead arithmetic, a bigger prog array than needed.
NOISE_PROG = """
-- prog noise
mov %r0, 3
mov %r4, 9
add %r0, %r4
lsh %r0, 2
exit
"""

FINDINGS = {
    "poke-skip-delete": """
-- maps
jmp_table prog_array key_size=4 value_size=4 max_entries=8
data array key_size=4 value_size=8 max_entries=4
-- prog target
mov %r0, 42
mov %r6, 1
add %r6, 5
exit
-- prog caller
mov %r7, 3
mov %r3, 0
lddw %r2, map:jmp_table
call 12
mov %r0, 1
add %r0, %r7
mov %r8, 11
exit
""" + NOISE_PROG + """
-- events
run noise
update jmp_table 0 prog:target
update data 1 = 01 02 03 04 05 06 07 08
run caller mem=01 02 03 04
run noise
delete jmp_table 0
run caller mem=01 02 03 04
run noise
-- meta
profile linux-6.1
inject poke-skip-delete
""",
    "poke-retarget-stale": """
-- maps
jmp_table prog_array key_size=4 value_size=4 max_entries=4
-- prog a
mov %r0, 10
mov %r5, 2
exit
-- prog b
mov %r0, 11
mov %r5, 4
exit
-- prog caller
mov %r6, 1
mov %r3, 1
lddw %r2, map:jmp_table
call 12
mov %r0, 2
add %r0, %r6
exit
""" + NOISE_PROG + """
-- events
update jmp_table 1 prog:a
run noise
run caller
update jmp_table 1 prog:b
run noise
run caller
run caller
-- meta
profile linux-6.1
inject poke-retarget-stale
""",
    "alu32-no-zext": """
-- prog main
mov %r0, 0
lddw %r1, 0xffffffff00000001
mov %r2, 1
mov %r7, 5
add32 %r1, %r2
mov %r0, %r1
rsh %r0, 32
add %r7, 1
exit
""" + NOISE_PROG + """
-- events
run noise
run main mem=00 11 22 33
run noise
run main
run noise
-- meta
profile linux-6.1
inject alu32-no-zext
""",
    # The fuzzer's shape: entry -> middle, whose subprogram tail-calls into a
    # self loop; the minimiser may fold it into one program that nests
    # through its own subprogram (the kernel allows that: 34 frames deep).
    "subprog-counter-reset": """
-- maps
outer prog_array key_size=4 value_size=4 max_entries=4
inner prog_array key_size=4 value_size=4 max_entries=4
-- prog entry
mov %r6, %r1
mov %r3, 0
lddw %r2, map:outer
call 12
mov %r0, 1
exit
-- prog middle
mov %r6, 0x1234
call local f
add %r0, %r6
exit
f:
mov %r7, 3
mov %r3, 1
lddw %r2, map:inner
call 12
mov %r0, %r7
exit
-- prog loop
mov %r8, 5
mov %r3, 1
lddw %r2, map:inner
call 12
mov %r0, %r8
exit
""" + NOISE_PROG + """
-- events
run noise
update outer 0 prog:middle
update inner 1 prog:loop
run noise
run entry
run noise
-- meta
profile linux-6.1
inject subprog-counter-reset
""",
    "tail-call-limit-ja": """
-- maps
jmp_table prog_array key_size=4 value_size=4 max_entries=4
counters array key_size=4 value_size=8 max_entries=2
-- prog loop
mov %r6, %r1
mov %r1, 0
stxw [%r10-4], %r1
mov %r2, %r10
add %r2, -4
lddw %r1, map:counters
call 1
jeq %r0, 0, out
lddw %r1, 1
lock add [%r0+0], %r1
out:
mov %r1, %r6
mov %r3, 0
lddw %r2, map:jmp_table
call 12
mov %r0, 7
exit
""" + NOISE_PROG + """
-- events
run noise
update jmp_table 0 prog:loop
run noise
run loop
run noise
-- meta
profile linux-6.1
inject tail-call-limit-ja
""",
}
# Findings are raw scenarios (R1 = mem): their programs run without a packet.
FINDINGS = {bug: raw_text(text) for bug, text in FINDINGS.items()}


@pytest.mark.parametrize("bug", sorted(FINDINGS))
def test_planted_bug_finding_minimises_small_and_still_reproduces(bug: str, tmp_path: Path, oracle) -> None:
    from bpfdiff.fuzz.minimize import minimize_finding

    from bpfdiff.scenario_text import write_scenario

    scenario = parse_scenario(FINDINGS[bug], f"<{bug}>")
    result = minimize_finding(scenario, time_budget=60)
    slots, events = result.end_size
    assert result.start_size[0] > 12 and result.start_size[1] > 4   # there was noise to remove
    assert slots <= 12 and events <= 4, (bug, result.end_size)
    assert not result.timed_out   # the minimiser reached a 1-minimal result within its budget
    # Without the bug the minimised scenario is fine: the divergence is the bug's.
    verdict = oracle.run_oracle(result.scenario, profile="linux-6.1", bugs=frozenset())
    assert verdict.ok, verdict.findings
    # And it replays as a finding with `bpfdiff run` (meta carries profile and inject).
    path = tmp_path / f"{bug}.min.scn"
    write_scenario(path, result.scenario)
    run = subprocess.run([sys.executable, "-m", "bpfdiff", "run", str(path)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr


def test_minimize_command_writes_atomically_and_reports(tmp_path: Path, oracle) -> None:
    crash = tmp_path / "crash-1.scn"
    crash.write_text(FINDINGS["alu32-no-zext"])
    run = subprocess.run([sys.executable, "-m", "bpfdiff", "minimize", str(crash)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "crash-1.min.scn"
    assert out.exists() and str(out) in run.stdout
    assert "minimize:" in run.stderr                  # progress lines
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp file left
    small = parse_scenario(out.read_text())
    assert small.size()[0] <= 12


def test_minimize_command_on_agreeing_scenario_is_bad_input(tmp_path: Path, oracle) -> None:
    path = tmp_path / "fine.scn"
    path.write_text(raw_text("-- prog p\nmov %r0, 1\nexit\n-- events\nrun p\n"))
    run = subprocess.run([sys.executable, "-m", "bpfdiff", "minimize", str(path)], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def test_minimize_a_data_file(tmp_path: Path, oracle) -> None:
    data = tmp_path / "zext.data"
    data.write_text("""-- asm
mov %r5, 7
lddw %r1, 0xffffffff00000001
mov %r2, 1
add %r5, %r2
add32 %r1, %r2
mov %r0, %r1
rsh %r0, 32
exit
-- result
0x0
""")
    out = tmp_path / "zext.min.scn"
    run = subprocess.run([sys.executable, "-m", "bpfdiff", "minimize", str(data), "-o", str(out),
                          "--inject", "alu32-no-zext", "--quiet"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    small = parse_scenario(out.read_text())
    assert small.size()[0] < 9 and small.meta_dict["inject"] == "alu32-no-zext"
    replay = subprocess.run([sys.executable, "-m", "bpfdiff", "run", str(out)], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert replay.returncode == 1


def test_minimize_an_atheris_artifact(tmp_path: Path, oracle) -> None:
    import random

    from bpfdiff.fuzz.generate import scenario_from_bytes

    rng = random.Random(5)
    for _ in range(500):   # byte inputs, as libFuzzer would try them, until one shows the bug
        data = rng.randbytes(rng.randint(16, 400))
        scenario = scenario_from_bytes(data)
        # the planted bug's divergence, not linux-6.1's known kernel bug (116e04ba1459)
        if oracle.run_oracle(scenario, bugs=frozenset({"poke-skip-delete"})).new_findings \
                and oracle.run_oracle(scenario).ok:
            break
    else:
        pytest.fail("no byte input showed poke-skip-delete")
    artifact = tmp_path / "crash-0123abcd"
    artifact.write_bytes(data)
    run = subprocess.run([sys.executable, "-m", "bpfdiff", "minimize", str(artifact), "--inject",
                          "poke-skip-delete", "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "crash-0123abcd.min.scn"
    small = parse_scenario(out.read_text())
    assert small.size()[0] <= 12 and small.size()[1] <= 4


def test_minimised_finding_is_one_minimal(oracle) -> None:
    """Removing any single event or instruction of the result loses the divergence (or validity)."""
    from dataclasses import replace

    from bpfdiff.fuzz.minimize import finding_test, minimize_finding

    scenario = parse_scenario(FINDINGS["poke-retarget-stale"])
    result = minimize_finding(scenario, time_budget=60)
    best = result.scenario
    signature = best.meta_dict["signature"]
    assert oracle.run_oracle(best, bugs=frozenset({"poke-retarget-stale"})).signature == signature
    still = finding_test(signature, "linux-6.1", frozenset({"poke-retarget-stale"}))
    for i in range(len(best.events)):
        assert not still(replace(best, events=best.events[:i] + best.events[i + 1:])), f"event {i} removable"
    for prog in best.programs:
        for start, _ in instruction_units(prog.insns):
            smaller = rewrite_program(prog.insns, {start: ()})
            if smaller:
                programs = tuple(Program(p.name, tuple(smaller)) if p is prog else p for p in best.programs)
                assert not still(replace(best, programs=programs)), f"{prog.name}:{start} removable"


def test_minimise_for_a_secondary_finding(oracle) -> None:
    """A stale direct jump both diverges and breaks the JIT's poke invariant: keep the latter."""
    from bpfdiff.fuzz.minimize import minimize_finding

    scenario = parse_scenario(FINDINGS["poke-skip-delete"])
    verdict = oracle.run_oracle(scenario, bugs=frozenset({"poke-skip-delete"}))
    violation = next(f.signature for f in verdict.findings if f.kind == "violation")
    result = minimize_finding(scenario, signature=violation)
    after = oracle.run_oracle(result.scenario, bugs=frozenset({"poke-skip-delete"}))
    assert violation in {f.signature for f in after.findings}
    # A violation needs no run at all: the delete that leaves the site stale is enough.
    assert result.end_size[1] <= 2
    with pytest.raises(ValueError, match="does not show"):
        minimize_finding(scenario, signature="divergence:linux-6.1:made-up")
