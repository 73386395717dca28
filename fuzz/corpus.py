"""Corpus feature coverage, and merging corpora into a smallest covering subset.

A scenario's *features* are plain strings in four families:

``op:<class>``
    every opcode class its programs use (:func:`bpfdiff.isa.opcode_class_name`);
``tc:<kind>``
    every tail-call site, ``direct`` or ``indirect``, as the JIT port's
    verifier model classifies it (:func:`direct_sites_by_xlate`; a program it
    refuses has none);
``ev:<kind>``
    every event kind, with prog-array updates told apart by what they do to
    the slot: ``prog_array.fill`` (empty -> program), ``prog_array.retarget``
    (program -> another program), ``prog_array.refill`` (program -> same
    program), ``prog_array.delete`` (program -> empty), ``prog_array.delete-empty``
    and ``load.after-fill`` (a program loaded while a slot is already filled:
    the kernel patches its direct sites at load time);
``tc×ev:<kind>×<kind>``
    a tail-call kind together with a map-event kind in one scenario -- the
    pairs that exercise poke descriptors (a direct site and a retarget...).

``merge`` keeps a smallest subset of scenarios with the same features (greedy
set cover, smaller scenarios first on ties), optionally adding Python line
coverage of ``bpfdiff.interp`` and ``bpfdiff.jit`` as ``line:`` features
(measured with the ``coverage`` package, which must then be installed).
"""

from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bpfdiff.isa import (
    Program,
    opcode_class_name,
)
from bpfdiff.scenario import Delete, Load, MapDef, Run, Scenario, Update

TAIL_CALL_KINDS = ("direct", "indirect")
EVENT_KINDS = (
    "run", "load", "load.after-fill", "update.data", "delete.data",
    "prog_array.fill", "prog_array.retarget", "prog_array.refill",
    "prog_array.delete", "prog_array.delete-empty",
)
PROG_ARRAY_EVENT_KINDS = tuple(k for k in EVENT_KINDS if k.startswith("prog_array."))
FAMILIES = ("op", "tc", "ev", "tc×ev", "line")

# --------------------------------------------------------------------------
# Tail-call sites.
# --------------------------------------------------------------------------
def direct_sites_by_xlate(program: Program, scenario: Scenario, profile: str) -> frozenset[int] | None:
    """Pcs (as loaded) of the sites the verifier model makes direct; None if it refuses the program.

    The kernel's own rule (:func:`bpfdiff.verifier.track_const_alu` through ALU ops,
    all paths agreeing on one map and an in-range key), the one xlate and the checker use.
    """
    used = set(program.map_names)
    return _direct_sites(program, tuple(m for m in scenario.maps if m.name in used), profile)


@functools.lru_cache(maxsize=4096)
def _direct_sites(program: Program, maps: tuple[MapDef, ...], profile: str) -> frozenset[int] | None:
    # Cached: the campaign asks for the features of every scenario it runs, and
    # mutants share most programs with their parents.
    from bpfdiff.profiles import get_profile
    from bpfdiff.verifier import VerifierError, verify

    try:
        xlated = verify(program, {m.name: m for m in maps}, get_profile(profile))
    except VerifierError:
        return None                    # the kernel would not load it: no site to classify
    return frozenset(xlated.orig_pc[poke.insn_idx] for poke in xlated.pokes)


def tail_call_sites(scenario: Scenario, profile: str | None = None) -> list[tuple[str, int, str]]:
    """(program, pc, kind) for every ``call bpf_tail_call`` in the scenario.

    The kind comes from the verifier model (:func:`direct_sites_by_xlate`) for the
    scenario's profile; a program the model refuses has no sites (it never runs).
    """
    profile = profile or scenario.meta_dict.get("profile", "linux-6.1")
    sites = []
    for prog in scenario.programs:
        if not any(insn.is_tail_call for insn in prog.insns):
            continue
        direct = direct_sites_by_xlate(prog, scenario, profile)
        if direct is None:
            continue
        for pc, insn in enumerate(prog.insns):
            if insn.is_tail_call and not (pc > 0 and prog.insns[pc - 1].is_lddw):
                sites.append((prog.name, pc, "direct" if pc in direct else "indirect"))
    return sites


# --------------------------------------------------------------------------
# Events.
# --------------------------------------------------------------------------
def event_kinds(scenario: Scenario) -> list[str]:
    """The kind of every event, prog-array updates classified by their effect on the slot."""
    prog_arrays = {m.name for m in scenario.maps if m.kind == "prog_array"}
    slots: dict[tuple[str, bytes], str] = {}
    kinds = []
    for event in scenario.events:
        if isinstance(event, Run):
            kinds.append("run")
        elif isinstance(event, Load):
            uses_filled = any(
                m in prog_arrays and any(k[0] == m for k in slots)
                for m in _program_maps(scenario, event.prog)
            )
            kinds.append("load.after-fill" if uses_filled else "load")
        elif isinstance(event, Update):
            if event.map not in prog_arrays:
                kinds.append("update.data")
                continue
            old = slots.get((event.map, event.key))
            slots[(event.map, event.key)] = str(event.value)
            kinds.append("prog_array." + ("fill" if old is None else "refill" if old == event.value else "retarget"))
        elif isinstance(event, Delete):
            if event.map not in prog_arrays:
                kinds.append("delete.data")
                continue
            old = slots.pop((event.map, event.key), None)
            kinds.append("prog_array." + ("delete" if old is not None else "delete-empty"))
    return kinds


def _program_maps(scenario: Scenario, name: str) -> tuple[str, ...]:
    try:
        return scenario.program(name).map_names
    except KeyError:
        return ()


# --------------------------------------------------------------------------
# Features.
# --------------------------------------------------------------------------
# "op:" + opcode_class_name by opcode: it reads nothing but the opcode's bits, and a campaign asks
# it of every slot of every scenario it runs
_OP_FEATURES: dict[int, str] = {}


def scenario_features(scenario: Scenario, sites: list[tuple[str, int, str]] | None = None) -> frozenset[str]:
    """Every feature the scenario covers (see the module docstring); ``sites``: its
    :func:`tail_call_sites`, when the caller has them."""
    features: set[str] = set()
    known = _OP_FEATURES
    for prog in scenario.programs:
        skip_next = False
        for insn in prog.insns:
            if skip_next:          # second slot of an lddw is not an instruction
                skip_next = False
                continue
            skip_next = insn.is_lddw
            name = known.get(insn.opcode)
            if name is None:
                name = known[insn.opcode] = "op:" + opcode_class_name(insn)
            features.add(name)
    tc_kinds = {kind for _, _, kind in (tail_call_sites(scenario) if sites is None else sites)}
    ev_kinds = set(event_kinds(scenario))
    features |= {"tc:" + k for k in tc_kinds}
    features |= {"ev:" + k for k in ev_kinds}
    features |= {f"tc×ev:{t}×{e}" for t in tc_kinds for e in ev_kinds if e.startswith(("prog_array.", "load"))}
    return frozenset(features)


def family(feature: str) -> str:
    return feature.split(":", 1)[0]


# --------------------------------------------------------------------------
# Loading a corpus.
# --------------------------------------------------------------------------
@dataclass
class Entry:
    path: Path
    scenario: Scenario
    features: frozenset[str]

    @property
    def size(self) -> tuple[int, int]:
        return self.scenario.size()


# Files in a corpus directory that are not inputs: reports, notes, temp files.
NOT_INPUTS = (".txt", ".md", ".html", ".json", ".tmp", ".log")


def corpus_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Input files named directly, or found (recursively, sorted) under directories."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and not p.name.startswith(".") and p.suffix not in NOT_INPUTS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


def load_corpus(paths: Iterable[str | os.PathLike[str]],
                warn: Callable[[str], None] | None = None) -> list[Entry]:
    """Load every input; unreadable ones are reported through ``warn`` and skipped."""
    from bpfdiff.inputs import load_input

    entries = []
    for path in corpus_files(paths):
        try:
            scenario = load_input(path)
        except Exception as exc:  # noqa: BLE001 - any bad input is one warning line, not a traceback
            if warn is not None:
                warn(f"{path}: skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        entries.append(Entry(path, scenario, scenario_features(scenario)))
    return entries


# --------------------------------------------------------------------------
# Set cover.
# --------------------------------------------------------------------------
def greedy_cover(entries: Sequence[Entry]) -> list[Entry]:
    """A small subset covering every feature of ``entries`` (greedy set cover).

    Each step takes the entry adding the most uncovered features; ties go to
    the smaller scenario, then to the path, so the result is deterministic.
    """
    uncovered = set().union(*(e.features for e in entries)) if entries else set()
    remaining = list(entries)
    chosen: list[Entry] = []
    while uncovered and remaining:
        best = max(remaining, key=lambda e: (len(e.features & uncovered), -sum(e.size), -len(str(e.path)),
                                              _reverse_key(str(e.path))))
        gain = best.features & uncovered
        if not gain:
            break
        chosen.append(best)
        uncovered -= gain
        remaining.remove(best)
    return chosen


def _reverse_key(text: str) -> tuple[int, ...]:
    # max() picks the largest key; negate characters so the smallest path wins ties.
    return tuple(-ord(c) for c in text)


# --------------------------------------------------------------------------
# Python line coverage of the engines.
# --------------------------------------------------------------------------
def line_coverage_features(scenario: Scenario, profile: str = "linux-6.1",
                           engines: Sequence[str] = ("interp", "jit")) -> frozenset[str]:
    """``line:<module>:<n>`` for every line of bpfdiff.interp / bpfdiff.jit the scenario runs."""
    try:
        import coverage
    except ImportError:
        raise RuntimeError("--coverage needs the `coverage` package (pip install coverage)") from None
    import bpfdiff.interp
    import bpfdiff.jit

    from bpfdiff.engine import make_engine

    roots = [Path(bpfdiff.interp.__file__).parent, Path(bpfdiff.jit.__file__).parent]
    made = [make_engine(name, profile=profile) for name in engines]
    cov = coverage.Coverage(data_file=None, include=[str(r / "*") for r in roots], branch=False)
    from bpfdiff import memo

    memo.forget_all()      # the verifier model's answers and the JIT's code are remembered: run them afresh
    cov.start()
    try:
        for engine in made:
            try:
                engine.execute(scenario)
            except Exception:  # noqa: BLE001, S110 - a crashing scenario still covers lines up to the crash
                pass
    finally:
        cov.stop()
        for engine in made:
            engine.close()
    data = cov.get_data()
    features = set()
    for filename in data.measured_files():
        path = Path(filename)
        root = next((r for r in roots if path.is_relative_to(r)), None)
        label = f"{root.name}/{path.relative_to(root)}" if root else path.name
        features |= {f"line:{label}:{n}" for n in data.lines(filename) or ()}
    return frozenset(features)


# --------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------
def coverage_table(entries: Sequence[Entry]) -> dict[str, Counter[str]]:
    """Family -> feature -> number of scenarios covering it."""
    table: dict[str, Counter[str]] = {}
    for entry in entries:
        for feature in entry.features:
            table.setdefault(family(feature), Counter())[feature.split(":", 1)[1]] += 1
    return table


def format_stats(entries: Sequence[Entry]) -> str:
    """Human-readable coverage of a corpus, with the known kinds it misses."""
    table = coverage_table(entries)
    slots = sum(e.size[0] for e in entries)
    events = sum(e.size[1] for e in entries)
    lines = [f"{len(entries)} scenarios, {slots} BPF slots, {events} events, "
             f"{sum(len(c) for c in table.values())} features"]
    universe = {"tc": TAIL_CALL_KINDS, "ev": EVENT_KINDS}
    for fam in FAMILIES:
        counts = table.get(fam, Counter())
        if not counts and fam not in universe:
            continue
        lines.append(f"{fam} ({len(counts)} covered):")
        for name, n in sorted(counts.items()):
            lines.append(f"  {name:<40} {n}")
        missing = [k for k in universe.get(fam, ()) if k not in counts]
        if missing:
            lines.append(f"  missing: {', '.join(missing)}")
    return "\n".join(lines)


def merge(entries: Sequence[Entry], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the greedy cover of ``entries`` into ``out_dir`` as scenario text files."""
    from bpfdiff.scenario_text import write_scenario

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    used: set[str] = set()
    for entry in greedy_cover(entries):
        name = _output_name(entry.path)
        stem, n = name, 1
        while name in used or (out / name).exists() and (out / name).resolve() != entry.path.resolve():
            n += 1
            name = f"{Path(stem).stem}-{n}{Path(stem).suffix}"
        used.add(name)
        write_scenario(out / name, entry.scenario)
        written.append(out / name)
    return written


def generate_entries(seeds: Iterable[int], profiles: Sequence[str]) -> list[Entry]:
    """Scenarios from the fuzzer's seeded generator, as corpus entries (named by profile and seed)."""
    from bpfdiff.fuzz.generate import scenario_from_seed

    entries = []
    for profile in profiles:
        for seed in seeds:
            scenario = scenario_from_seed(seed, profile)
            entries.append(Entry(Path(f"seed-{profile}-{seed}"), scenario, scenario_features(scenario)))
    return entries


def _output_name(path: Path) -> str:
    from bpfdiff import scenario_text

    suffix = getattr(scenario_text, "SUFFIX", ".scn")
    # Only a known input suffix is replaced: "seed-linux-6.1-7" has none.
    stem = path.name[: -len(path.suffix)] if path.suffix in (suffix, ".data") else path.name
    return stem + suffix


def warn_stderr(line: str) -> None:
    print(line, file=sys.stderr)
