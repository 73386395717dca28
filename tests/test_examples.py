"""The bundled example scenarios: both engines, both profiles, the R0 values worked out by hand.

Expected values come from reading the programs (see each file's comments),
not from running an engine: a tail call replaces the caller, an empty slot or
an out-of-range key falls through, and both profiles allow exactly 33 tail
calls (linux-6.1: MAX_TAIL_CALL_CNT 33 tested with >=; linux-5.5: 32 with >).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfdiff.compare import compare_outcomes
from bpfdiff.engine import EXIT, make_engine
from bpfdiff.profiles import PROFILES
from bpfdiff.scenario_text import read_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "corpus" / "examples"
LOOP_TRACE = ("loop",) * 34

# example -> event index -> (r0, tail_calls, trace) for runs, or retval for map events
EXPECTED: dict[str, dict[int, tuple[int, int, tuple[str, ...]] | int]] = {
    "direct_tail_call": {
        0: 0,
        1: (42, 1, ("caller", "target")),
        2: 0,
        3: (1, 0, ("caller",)),
        4: 0,
        5: (42, 1, ("caller", "target")),
    },
    "tail_call_limit": {
        0: 0,
        1: (34, 33, LOOP_TRACE),
        2: (68, 33, LOOP_TRACE),
        3: 0,
        4: (69, 0, ("loop",)),
    },
    "retarget": {
        0: 0,
        1: (0xA, 1, ("direct", "a")),
        2: (0xA, 1, ("indirect", "a")),
        3: 0,
        4: (0xB, 1, ("direct", "b")),
        5: (0xB, 1, ("indirect", "b")),
        6: (2, 0, ("indirect",)),
        7: (2, 0, ("indirect",)),
        8: 0,
        9: (0xB, 1, ("late", "b")),
        10: 0,
        11: (3, 0, ("late",)),
        12: (1, 0, ("direct",)),
        13: 0,
        14: (0xA, 1, ("late", "a")),
    },
}


@pytest.fixture(scope="module")
def engines() -> dict[tuple[str, str], object]:
    made = {(name, profile): make_engine(name, profile=profile) for name in ("interp", "jit") for profile in PROFILES}
    yield made
    for engine in made.values():
        engine.close()


# Examples of a known kernel bug: the engines diverge on the profiles whose
# kernel had it (tests/test_tailcall_hierarchy.py checks them).
KNOWN_BUG_EXAMPLES = {"tailcall_hierarchy"}


def test_every_example_has_expectations() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.scn")} == set(EXPECTED) | KNOWN_BUG_EXAMPLES


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_on_both_engines(example: str, profile: str, engines: dict) -> None:
    scenario = read_scenario(EXAMPLES / f"{example}.scn")
    outcomes = {name: engines[(name, profile)].execute(scenario) for name in ("interp", "jit")}
    assert compare_outcomes(outcomes) == []
    for name, seq in outcomes.items():
        assert len(seq) == len(scenario.events)
        for index, outcome in enumerate(seq):
            expected = EXPECTED[example][index]
            assert not outcome.violations, (name, index, outcome.violations)
            if isinstance(expected, int):
                assert outcome.run is None and outcome.retval == expected, (name, index, outcome)
            else:
                run = outcome.run
                assert run is not None and run.exit == EXIT, (name, index, run)
                assert (run.r0, run.tail_calls, run.trace) == expected, (name, index)
    first_run = next(o.run for o in outcomes["jit"] if o.run is not None)
    assert scenario.expect is not None and first_run.r0 == scenario.expect.result


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_run_command_agrees_on_each_example(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bpfdiff import cli

    assert cli.main(["run", str(EXAMPLES / f"{example}.scn")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("OK: interp and jit agree on")


# A planted bug must show up where the example's own reasoning says it must:
# (bug, example, event, field, interp value, jit value)
PLANTED = [
    # `ja` instead of `jae`: one more self tail call, so one more count.
    ("tail-call-limit-ja", "tail_call_limit", 1, "tail_calls", 33, 34),
    ("tail-call-limit-ja", "tail_call_limit", 1, "r0", 34, 35),
    # the delete does not re-patch the site: the second run still reaches target
    ("poke-skip-delete", "direct_tail_call", 3, "r0", 1, 42),
    # the retarget a -> b does not re-patch the direct site: it still reaches a
    ("poke-retarget-stale", "retarget", 4, "r0", 0xB, 0xA),
]


@pytest.mark.parametrize(("bug", "example", "event", "field", "interp_value", "jit_value"), PLANTED)
def test_planted_bug_diverges_where_expected(bug: str, example: str, event: int, field: str,
                                             interp_value: int, jit_value: int) -> None:
    scenario = read_scenario(EXAMPLES / f"{example}.scn")
    engines = {"interp": make_engine("interp"), "jit": make_engine("jit", bugs=frozenset({bug}))}
    try:
        outcomes = {name: engine.execute(scenario) for name, engine in engines.items()}
    finally:
        for engine in engines.values():
            engine.close()
    differences = compare_outcomes(outcomes)
    assert differences, "the planted bug went unnoticed"
    first = min(d.event_index for d in differences)
    assert first == event
    matching = [d for d in differences if d.event_index == event and d.field == field]
    assert matching and matching[0].values == {"interp": interp_value, "jit": jit_value}
