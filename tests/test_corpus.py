"""Corpus features, greedy set cover, `bpfdiff corpus stats/merge`, and the seed corpus."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from bpfdiff.profiles import get_profile
from bpfdiff.scenario_text import parse_scenario, read_scenario

from bpfdiff.fuzz.corpus import (  # isort: skip
    EVENT_KINDS,
    Entry,
    event_kinds,
    greedy_cover,
    scenario_features,
    tail_call_sites,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "corpus" / "examples"
SEEDS = REPO / "corpus" / "seeds"


def test_retarget_example_tail_call_kinds_follow_the_verifier_rule() -> None:
    # The example's comments say which site is which: direct (constant key 1 on a
    # 2-entry array), indirect (key loaded from the context), late (constant key 1).
    scenario = read_scenario(EXAMPLES / "retarget.scn")
    kinds = {prog: kind for prog, _, kind in tail_call_sites(scenario)}
    assert kinds == {"direct": "direct", "indirect": "indirect", "late": "direct"}


def test_constant_key_out_of_range_is_not_direct() -> None:
    # The verifier poisons a constant key >= max_entries: no poke descriptor, indirect code.
    scenario = parse_scenario("""
-- maps
t prog_array key_size=4 value_size=4 max_entries=2
-- prog p
mov %r3, 2
lddw %r2, map:t
call 12
mov %r0, 0
exit
""")
    assert [kind for _, _, kind in tail_call_sites(scenario)] == ["indirect"]


def test_key_set_before_a_branch_target_is_not_trusted() -> None:
    scenario = parse_scenario("""
-- maps
t prog_array key_size=4 value_size=4 max_entries=4
-- prog p
mov %r3, 0
jeq %r1, 0, site
mov %r3, 1
site:
lddw %r2, map:t
call 12
mov %r0, 0
exit
""")
    assert [kind for _, _, kind in tail_call_sites(scenario)] == ["indirect"]


def test_event_kinds_track_slot_state() -> None:
    scenario = read_scenario(EXAMPLES / "retarget.scn")
    kinds = event_kinds(scenario)
    assert kinds[0] == "prog_array.fill"
    assert kinds[3] == "prog_array.retarget"
    assert "load.after-fill" in kinds            # `load late` after slot 1 was filled
    assert "prog_array.delete" in kinds
    assert set(kinds) <= set(EVENT_KINDS)


def test_features_cover_opcode_classes_without_the_second_lddw_slot() -> None:
    scenario = read_scenario(EXAMPLES / "direct_tail_call.scn")
    features = scenario_features(scenario)
    ops = {f for f in features if f.startswith("op:")}
    assert ops == {"op:alu64.mov.k", "op:ld.imm64", "op:jmp.call", "op:jmp.exit"}
    assert "tc:direct" in features and "tc:indirect" not in features
    # update, run, delete, run, update (the slot is empty again: a fill), run
    assert {f for f in features if f.startswith("ev:")} == {"ev:run", "ev:prog_array.fill", "ev:prog_array.delete"}
    assert "tc×ev:direct×prog_array.delete" in features


def _entry(name: str, features: set[str], slots: int) -> Entry:
    text = "-- prog p\n" + "mov %r0, 0\n" * (slots - 1) + "exit\n-- events\nrun p\n"
    return Entry(Path(name), parse_scenario(text), frozenset(features))


def test_greedy_cover_keeps_coverage_and_prefers_small() -> None:
    entries = [
        _entry("big", {"a", "b", "c"}, 30),
        _entry("small_ab", {"a", "b"}, 2),
        _entry("small_c", {"c"}, 2),
        _entry("dup", {"a"}, 2),
        _entry("d", {"d"}, 5),
    ]
    chosen = greedy_cover(entries)
    covered = set().union(*(e.features for e in chosen))
    assert covered == {"a", "b", "c", "d"}
    assert [e.path.name for e in chosen] == ["big", "d"]          # 3 new features beat 2
    # Equal gain: the smaller scenario wins.
    tie = greedy_cover([_entry("x_big", {"a"}, 9), _entry("x_small", {"a"}, 2)])
    assert [e.path.name for e in tie] == ["x_small"]


def _bpfdiff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bpfdiff", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_corpus_stats_command_lists_families() -> None:
    run = _bpfdiff("corpus", "stats", str(EXAMPLES))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("4 scenarios")
    assert "tc (2 covered)" in run.stdout
    assert "alu64.mov.k" in run.stdout


def test_corpus_merge_keeps_coverage_and_drops_redundant(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in EXAMPLES.iterdir():
        (src / p.name).write_text(p.read_text())
    # A duplicate of an example adds nothing: merge must drop it.
    (src / "copy_of_direct.scn").write_text((EXAMPLES / "direct_tail_call.scn").read_text())
    (src / "notes.txt").write_text("not an input")
    (src / "broken.scn").write_text("-- prog p\nbogus %r0\n")
    out = tmp_path / "out"
    run = _bpfdiff("corpus", "merge", str(src), "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert "broken.scn" in run.stderr and "Traceback" not in run.stderr
    kept = sorted(p.name for p in out.iterdir())
    assert "copy_of_direct.scn" not in kept and len(kept) <= 3
    before = _bpfdiff("corpus", "stats", str(EXAMPLES)).stdout.splitlines()[0].split(", ")[-1]
    after = _bpfdiff("corpus", "stats", str(out)).stdout.splitlines()[0].split(", ")[-1]
    assert before == after                       # same number of features


def test_corpus_merge_with_line_coverage(tmp_path: Path) -> None:
    pytest.importorskip("coverage", reason="--coverage needs the coverage package")
    from bpfdiff.fuzz.corpus import line_coverage_features, load_corpus

    out = tmp_path / "out"
    run = _bpfdiff("corpus", "merge", str(EXAMPLES), "-o", str(out), "--coverage")
    assert run.returncode == 0, run.stderr
    assert "lines)" in run.stdout

    def lines(paths: list[Path]) -> set[str]:
        return set().union(*(line_coverage_features(e.scenario) for e in load_corpus(paths)))

    before, after = lines([EXAMPLES]), lines([out])
    assert any(f.startswith("line:jit/") for f in before) and any(f.startswith("line:interp/") for f in before)
    assert after == before                      # the kept subset runs every line the whole corpus ran


def test_seed_corpus_covers_every_class_kind_and_event() -> None:
    if not SEEDS.is_dir() or not any(SEEDS.iterdir()):
        pytest.skip("corpus/seeds not generated yet")
    from bpfdiff.fuzz.corpus import load_corpus

    entries = load_corpus([SEEDS])
    features = set().union(*(e.features for e in entries))
    assert {"tc:direct", "tc:indirect"} <= features
    for kind in ("run", "load", "load.after-fill", "prog_array.fill", "prog_array.retarget", "prog_array.delete"):
        assert f"ev:{kind}" in features, kind
    covered = {f.split(":", 1)[1] for f in features if f.startswith("op:")}
    profiles = {get_profile(e.scenario.meta_dict.get("profile", "linux-6.1")) for e in entries}
    missing = _opcode_class_universe(profiles) - covered
    assert not missing, f"seed corpus misses opcode classes {sorted(missing)}"


def _opcode_class_universe(profiles=None) -> set[str]:
    """Every opcode class label of an encoding the ISA model accepts (independent of any corpus).

    With ``profiles``: only what at least one of those kernels has (the verifier model's
    instruction set per profile: no ISA v4 before 6.6, no atomics beyond add before 5.12).
    """
    from bpfdiff.isa import Insn, InvalidInstruction, check_insn, opcode_class_name
    from bpfdiff.verifier import insn_refusal

    names = set()
    for opcode in range(1, 256):
        for dst, src, off, imm in itertools.product((0, 1), (0, 1), (0, 1, 8), (0, 1, 16, 0xE1, 0xF1)):
            insn = Insn(opcode, dst, src, off, imm)
            try:
                check_insn(0, insn)
            except InvalidInstruction:
                continue
            if profiles is None or any(insn_refusal(insn, p) is None for p in profiles):
                names.add(opcode_class_name(insn))
    return names


def test_opcode_class_universe_of_the_modelled_kernels() -> None:
    from bpfdiff.profiles import LINUX_5_5, LINUX_6_1

    universe = _opcode_class_universe([LINUX_6_1, LINUX_5_5])
    assert {"alu64.add.k", "alu.end.x", "jmp32.jset", "jmp.ja", "stx.atomic.w", "stx.atomic.dw"} <= universe
    # ISA v4 (6.6+): sign-extending loads, 64-bit bswap; ja32 (gotol) alone loads on Debian's
    # 6.1.192 (measured), not on linux-5.5
    assert not {"ldx.b.sx", "ldx.w.sx", "alu64.end.k"} & universe
    assert "jmp32.ja" in universe and "jmp32.ja" not in _opcode_class_universe([LINUX_5_5])


def test_opcode_class_universe_is_the_isa() -> None:
    universe = _opcode_class_universe()
    # 13 ALU ops (+ end) x K/X in two widths, 12 conditional jumps in two widths...
    assert {"alu64.add.k", "alu.add.x", "alu64.end.k", "jmp32.jset", "jmp.call", "jmp.exit", "ld.imm64",
            "ldx.b.sx", "ldx.dw", "st.h", "stx.atomic.w", "stx.atomic.dw"} <= universe
    assert not any(name.startswith("ldx.dw.sx") for name in universe)        # no 64-bit sign-extending load


def _seed_and_example_scenarios() -> list:
    from bpfdiff.fuzz.corpus import load_corpus

    return load_corpus([EXAMPLES, SEEDS] if SEEDS.is_dir() else [EXAMPLES])


def test_direct_sites_match_the_jits_poke_descriptors() -> None:
    # Independent fact: the JIT engine emits one poke descriptor per direct site.
    from collections import Counter

    from bpfdiff.engine import make_engine

    checked = 0
    for entry in _seed_and_example_scenarios():
        profile = entry.scenario.meta_dict.get("profile", "linux-6.1")
        jit = make_engine("jit", profile=profile)
        try:
            jit.start(entry.scenario)      # loads (and JITs) every program without a Load event
            direct = Counter(p for p, _, kind in tail_call_sites(entry.scenario) if kind == "direct")
            for name, jited in jit.programs.items():
                assert len(jited.pokes) == direct.get(name, 0), (entry.path, name)
                checked += len(jited.pokes)
        finally:
            jit.close()
    assert checked > 0


def test_seed_corpus_agrees_on_both_engines_without_bugs() -> None:
    from bpfdiff.fuzz.oracle import run_oracle

    for entry in _seed_and_example_scenarios():
        profile = entry.scenario.meta_dict.get("profile", "linux-6.1")
        verdict = run_oracle(entry.scenario, profile=profile)
        if entry.path.stem == "tailcall_hierarchy":      # the example of a known kernel bug
            assert verdict.signature == f"known:{profile}:116e04ba1459", entry.path
            continue
        assert verdict.ok, (entry.path, verdict.signature)


def test_merge_into_unwritable_place_is_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = _bpfdiff("corpus", "merge", str(EXAMPLES), "-o", str(blocker / "out"))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and "file" in run.stderr


def test_stats_of_missing_directory_is_one_line_error(tmp_path: Path) -> None:
    run = _bpfdiff("corpus", "stats", str(tmp_path / "nowhere"))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "nowhere" in run.stderr
