"""The scenario generator: deterministic, valid by construction, and producing the bug-triggering shapes."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from bpfdiff.fuzz.checker import check_scenario, tail_call_sites
from bpfdiff.fuzz.corpus import event_kinds
from bpfdiff.fuzz.generate import (
    ByteDraw,
    RandomDraw,
    generate_scenario,
    mutate_scenario,
    scenario_from_bytes,
    scenario_from_seed,
)

from bpfdiff import isa
from bpfdiff.engine import EXIT, make_engine
from bpfdiff.profiles import get_profile
from bpfdiff.scenario import Delete, Load, Run, Update, key_u32

PROFILES = ("linux-6.1", "linux-5.5")
SEEDS = range(300)


def test_same_seed_same_scenario_and_different_seeds_differ():
    for seed in (0, 1, 17, 123456):
        assert scenario_from_seed(seed) == scenario_from_seed(seed)
    assert len({scenario_from_seed(seed) for seed in range(50)}) == 50


def test_random_draw_draws_what_random_random_draws():
    """RandomDraw writes out randint/randrange for speed: the stream must stay the library's."""
    ours, theirs = RandomDraw(42), random.Random(42)
    spans = [(0, 0), (0, 1), (3, 3), (-5, 5), (0, 6), (0, 7), (0, 8), (1, 1000), (0, 2**32 - 1), (0, 2**64),
             (-(2**63), 2**63 - 1)]
    for k in range(3000):
        lo, hi = spans[k % len(spans)]
        assert ours.integer(lo, hi) == theirs.randint(lo, hi)
        seq = tuple(range(k % 37 + 1))
        assert ours.choice(seq) == theirs.choice(seq)
        assert ours.boolean(0.3) == (theirs.random() < 0.3)
    for draw in (RandomDraw(1), RandomDraw(random.Random(1))):
        with pytest.raises(ValueError):
            draw.integer(2, 1)
        with pytest.raises(ValueError):
            draw.choice(())

    class Other(random.Random):
        def random(self):
            return 0.5

    assert RandomDraw(Other(3)).integer(0, 9) == Other(3).randint(0, 9)


def test_same_bytes_same_scenario():
    data = random.Random(5).randbytes(200)
    assert scenario_from_bytes(data, "linux-6.1") == scenario_from_bytes(data, "linux-6.1")
    assert scenario_from_bytes(data, "linux-6.1") != scenario_from_bytes(data[:100] + b"\xff" * 100, "linux-6.1")


def test_byte_draw_takes_minimal_choices_when_exhausted():
    draw = ByteDraw(b"\x05")
    assert draw.integer(0, 9) == 5          # one byte, 5 % 10
    assert draw.integer(3, 1000) == 3       # exhausted: the minimum
    assert draw.choice("xyz") == "x"
    assert draw.boolean(0.99) is False
    assert draw.exhausted


def test_empty_input_gives_a_small_valid_scenario():
    s = scenario_from_bytes(b"", "linux-6.1")
    assert check_scenario(s, "linux-6.1") == []
    assert any(isinstance(e, Run) for e in s.events)
    assert sum(len(p.insns) for p in s.programs) <= 6


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_scenarios_pass_the_checker(profile):
    for seed in SEEDS:
        s = scenario_from_seed(seed, profile)
        assert check_scenario(s, profile) == [], (seed, check_scenario(s, profile))


@pytest.mark.parametrize("profile", PROFILES)
def test_scenarios_from_arbitrary_bytes_pass_the_checker(profile):
    rng = random.Random(profile)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(0, 400))
        s = scenario_from_bytes(data, profile)
        assert check_scenario(s, profile) == [], (data.hex(), check_scenario(s, profile))


def test_scenario_records_profile_and_seed():
    meta = scenario_from_seed(7, "linux-5.5").meta_dict
    assert meta["profile"] == "linux-5.5" and meta["seed"] == "7"


def test_byte_scenarios_follow_the_environment(monkeypatch):
    monkeypatch.setenv("BPFDIFF_PROFILE", "linux-5.5")
    monkeypatch.setenv("BPFDIFF_INJECT", "poke-skip-delete")
    meta = scenario_from_bytes(b"\x01\x02").meta_dict
    assert meta["profile"] == "linux-5.5" and meta["inject"] == "poke-skip-delete"


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_programs_run_without_faults_on_the_interpreter(profile):
    """A valid program never faults or times out: the checker's memory rules hold at run time."""
    engine = make_engine("interp", profile=profile)
    counts: Counter[int] = Counter()
    for seed in range(150):
        for outcome in engine.execute(scenario_from_seed(seed, profile)):
            if outcome.run is not None:
                assert outcome.run.exit == EXIT, (seed, outcome.run)
                counts[outcome.run.tail_calls] += 1
    assert counts[33] > 10          # self loops that run into the limit
    assert counts[0] and counts[1]


def _shapes(profile: str, seeds: range) -> Counter[str]:
    """Which bug-relevant shapes the generator produced over ``seeds``."""
    shapes: Counter[str] = Counter()
    for seed in seeds:
        s = scenario_from_seed(seed, profile)
        kinds = event_kinds(s)
        for i, kind in enumerate(kinds):
            if kind in ("prog_array.delete", "prog_array.retarget") and "run" in kinds[i:]:
                shapes[kind + "+later-run"] += 1
        if "load.after-fill" in kinds:
            shapes["load.after-fill"] += 1
        for prog in s.programs:
            sites = tail_call_sites(prog, s, profile)
            shapes.update("direct" if site.direct else "indirect" for site in sites)
            if any(site.in_subprog for site in sites):
                shapes["subprog-tail-call"] += 1
            for insn in prog.insns:
                if insn.cls == isa.BPF_ALU and insn.source == isa.BPF_X and insn.op != isa.BPF_MOV:
                    shapes["alu32-reg"] += 1
                if insn.is_alu and insn.op in (isa.BPF_DIV, isa.BPF_MOD) and insn.off == 1:
                    shapes["sdiv/smod"] += 1
                if insn.is_pseudo_call:
                    shapes["call-local"] += 1
                if insn.is_jmp and insn.op not in (isa.BPF_CALL, isa.BPF_EXIT) and isa.jump_target(0, insn) <= 0:
                    shapes["loop"] += 1
                if insn.cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC:
                    shapes["atomic"] += 1
                if insn.is_helper_call:
                    shapes[f"helper{insn.imm}"] += 1
        for ev in s.events:
            shapes[type(ev).__name__] += 1
        self_fills = [e for e in s.events if isinstance(e, Update) and isinstance(e.value, str)
                      and any(site.key is not None and e.key == key_u32(site.key)
                              for site in tail_call_sites(s.program(e.value), s, profile) if site.map == e.map)]
        if self_fills:
            shapes["self-loop-fill"] += 1
    return shapes


@pytest.mark.parametrize("profile", PROFILES)
def test_generator_produces_the_shapes_planted_bugs_need(profile):
    shapes = _shapes(profile, range(200))
    for shape in ("prog_array.delete+later-run", "prog_array.retarget+later-run", "load.after-fill", "direct",
                  "indirect", "alu32-reg", "call-local", "loop", "atomic", "helper1", "helper2",
                  "helper7", "self-loop-fill", "Run", "Update", "Delete", "Load"):
        assert shapes[shape] >= 10, (shape, shapes)
    # sdiv/smod are ISA v4 (6.6+): emitted only where the profile's kernel has them
    if get_profile(profile).isa_v4:
        assert shapes["sdiv/smod"] >= 10, shapes
    else:
        assert shapes["sdiv/smod"] == 0, shapes
    if profile == "linux-6.1":
        assert shapes["subprog-tail-call"] >= 10
    else:
        assert shapes["subprog-tail-call"] == 0


def test_scenarios_stay_small():
    sizes = [scenario_from_seed(seed).size() for seed in range(200)]
    slots = sorted(s for s, _ in sizes)
    events = sorted(e for _, e in sizes)
    assert slots[len(slots) // 2] <= 150 and events[len(events) // 2] <= 14


def test_generator_interface_is_driver_agnostic():
    """The same decisions through two drivers give the same scenario."""
    class Recording(RandomDraw):
        def __init__(self, seed):
            super().__init__(seed)
            self.log = []

        def integer(self, lo, hi):
            value = super().integer(lo, hi)
            self.log.append(value)
            return value

        def boolean(self, p=0.5):
            value = super().boolean(p)
            self.log.append(value)
            return value

        def choice(self, seq):
            return seq[self.integer(0, len(seq) - 1)]

    class Replay:
        def __init__(self, log):
            self.log = list(log)

        def integer(self, lo, hi):
            return self.log.pop(0)

        def choice(self, seq):
            return seq[self.integer(0, len(seq) - 1)]

        def boolean(self, p=0.5):
            return self.log.pop(0)

    recording = Recording(99)
    first = generate_scenario(recording, "linux-6.1")
    assert generate_scenario(Replay(recording.log), "linux-6.1") == first


def test_mutations_are_deterministic_and_mostly_valid():
    valid = 0
    for seed in range(100):
        parent = scenario_from_seed(seed)
        a = mutate_scenario(parent, RandomDraw(seed))
        assert a == mutate_scenario(parent, RandomDraw(seed))
        valid += not check_scenario(a, "linux-6.1")
    assert valid >= 60


def test_events_only_use_loaded_programs():
    for seed in range(200):
        s = scenario_from_seed(seed)
        upfront, _ = s.load_order()
        loaded = set(upfront)
        for ev in s.events:
            if isinstance(ev, Load):
                loaded.add(ev.prog)
            if isinstance(ev, Run):
                assert ev.prog in loaded
            if isinstance(ev, Update) and isinstance(ev.value, str):
                assert ev.value in loaded
            assert not isinstance(ev, Delete) or ev.map in {m.name for m in s.maps}
