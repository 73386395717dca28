"""bench/mutations.py stays runnable: every snippet applies exactly once and every mutated tree imports.

No campaign runs here (that is the benchmark's job, minutes to hours); this
fails as soon as code a mutation targets moves, so the benchmark is fixed
with the change that moved it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from bpfdiff.bugs import BUGS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "mutations.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_mutations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def test_every_snippet_applies_exactly_once():
    assert bench.check_snippets(ROOT) == []


def test_at_least_30_distinct_mutations_across_the_areas():
    names = [m.name for m in bench.MUTATIONS]
    assert len(names) >= 30
    assert len(set(names)) == len(names)
    areas = {m.area for m in bench.MUTATIONS}
    assert {"jit", "poke", "interp", "maps", "xlate", "verifier"} <= areas


def test_no_mutation_is_a_planted_bug_switch():
    # the planted bugs live behind `"NAME" in bugs` tests: a mutation must not touch those lines
    planted = {bug.name for bug in BUGS}
    for mutation in bench.MUTATIONS:
        for name in planted:
            assert name not in mutation.original and name not in mutation.replacement, mutation.name


def test_a_stale_snippet_is_reported_with_its_file():
    stale = bench.Mutation("stale", "jit", "jit/poke.py", "this text is not in poke.py", "x", "nothing")
    problems = bench.check_snippets(ROOT, (stale,))
    assert len(problems) == 1 and problems[0].startswith("jit/poke.py: mutation stale: the snippet occurs 0 times")
    twice = bench.Mutation("twice", "jit", "jit/poke.py", "import", "x", "nothing")
    assert "occurs" in bench.check_snippets(ROOT, (twice,))[0]


def test_the_tree_is_the_package_layout_with_one_change(tmp_path):
    mutation = bench.MUTATIONS_BY_NAME["poke-rel32-from-start"]
    tree = bench.build_tree(tmp_path, mutation)
    mutated = (tree / "bpfdiff" / "jit" / "poke.py").read_text()
    assert mutation.replacement in mutated and mutation.original not in mutated
    assert (tree / "bpfdiff" / "interp" / "vm.py").read_text() == (ROOT / "interp" / "vm.py").read_text()
    assert (tree / "bpfdiff" / "fuzz" / "campaign.py").is_file()
    assert mutation.module() == "bpfdiff.jit.poke"


def test_every_mutated_tree_imports():
    # one process builds each tree in turn and imports the mutated module from it (never the installed one)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check-imports"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(line.split()[1] for line in lines if line.startswith("ok ")) == \
        sorted(m.name for m in bench.MUTATIONS)
