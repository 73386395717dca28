"""The atheris harness as libFuzzer runs it: fuzzing, crash artifacts that replay, corpus merge."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (no binary wheel for this platform): "
                                       "the libFuzzer harness cannot run here")

from bpfdiff.fuzz.generate import scenario_from_bytes  # noqa: E402
from bpfdiff.fuzz.oracle import run_oracle  # noqa: E402

from bpfdiff.cli import main as cli_main  # noqa: E402

HARNESS = [sys.executable, "-m", "bpfdiff.fuzz.atheris_fuzzer"]


def harness(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BPFDIFF_")}
    environment.update(env)
    # The timeout only stops a hung harness: 2,000 inputs take ~2.5 min alone on an idle core and hit 240 s
    # on a loaded 2-core machine, which is not a failure of the harness.
    return subprocess.run(HARNESS + args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


def seed_corpus(directory: Path, count: int, size: int = 64) -> Path:
    directory.mkdir()
    for i in range(count):
        (directory / f"seed{i}").write_bytes(random.Random(i).randbytes(size))
    return directory


def diverging_input(bug: str) -> bytes:
    """A byte input whose scenario shows ``bug`` (searched deterministically)."""
    for i in range(500):
        data = random.Random(1000 + i).randbytes(64)
        if not run_oracle(scenario_from_bytes(data, "linux-6.1"), bugs=frozenset({bug})).ok:
            return data
    raise AssertionError(f"no input shows {bug}")


def test_harness_runs_2000_inputs_without_findings(tmp_path):
    seeds = seed_corpus(tmp_path / "seeds", 5)
    proc = harness(["-runs=2000", "-max_len=96", str(seeds)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Done 2000 runs" in proc.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_finding_becomes_an_artifact_that_replays(tmp_path, capsys):
    data = diverging_input("tail-call-limit-ja")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "diverging").write_bytes(data)
    proc = harness(["-runs=50", f"-artifact_prefix={tmp_path}/", str(seeds)], tmp_path,
                   BPFDIFF_INJECT="tail-call-limit-ja")
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr          # atheris prints the exception on stdout
    assert "FindingError: divergence:linux-6.1:" in output
    artifacts = list(tmp_path.glob("crash-*"))
    assert len(artifacts) == 1 and artifacts[0].read_bytes() == data
    # replay: the same scenario, the same bug -> the same divergence; no bug -> agreement
    assert cli_main(["run", str(artifacts[0]), "--inject", "tail-call-limit-ja"]) == 1
    assert cli_main(["run", str(artifacts[0])]) == 0
    capsys.readouterr()


def test_bad_environment_is_a_one_line_error(tmp_path):
    proc = harness(["-runs=1"], tmp_path, BPFDIFF_INJECT="no-such-bug")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bpfdiff atheris harness:")


def test_merge_shrinks_a_corpus_directory(tmp_path):
    big = seed_corpus(tmp_path / "big", 40, size=48)
    # duplicates add no coverage: merge must drop them
    for i in range(10):
        (big / f"dup{i}").write_bytes((big / "seed0").read_bytes())
    small = tmp_path / "small"
    small.mkdir()
    proc = harness(["-merge=1", str(small), str(big)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = list(small.iterdir())
    assert 0 < len(kept) < 50
