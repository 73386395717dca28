"""The OSS-Fuzz / ClusterFuzzLite build, run as those services run it.

``.clusterfuzzlite/build.sh`` runs in a copy of the repository (the
Dockerfile's ``COPY . $SRC/bpfdiff``) with OSS-Fuzz's environment (``SRC``,
``OUT``, ``WORK``) and two stand-ins on ``PATH``: ``pip3``, which installs
into a scratch directory instead of the system, and ``compile_python_fuzzer``,
which does what OSS-Fuzz's script of that name does outside its coverage and
introspector modes -- PyInstaller, one file, ``--distpath $OUT``, the package
made non-executable and a wrapper script named after the target.  One build
(the linux-6.1 target, ~1-2 minutes); the binary then runs from an empty
directory with a clean environment:

* ``-runs=100``: exit 0 (no false finding: unicorn and capstone are whole);
* with a planted bug (``BPFDIFF_INJECT``) and a seed corpus holding an input
  that shows it (searched here, in-process), it writes a ``crash-<sha1>`` that
  ``bpfdiff run`` replays as a divergence; without the bug the same seed is clean.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bpfdiff.fuzz.targets import target_name, target_source, write_targets

from bpfdiff.profiles import PROFILES

REPO = Path(__file__).resolve().parent.parent
PROFILE = "linux-6.1"
BUG = "alu32-no-zext"       # a 32-bit ALU op with a register source: common in generated programs

# What OSS-Fuzz's compile_python_fuzzer does (infra/base-images/base-builder),
# coverage and introspector modes aside.
COMPILE_PYTHON_FUZZER = """\
#!/bin/bash -eu
fuzzer_path=$1
shift 1
fuzzer_basename=$(basename -s .py "$fuzzer_path")
fuzzer_package=${fuzzer_basename}.pkg
PYFUZZ_WORKPATH=$SRC/pyfuzzworkdir/
FUZZ_WORKPATH=$PYFUZZ_WORKPATH/$fuzzer_basename
rm -rf "$PYFUZZ_WORKPATH"
mkdir "$PYFUZZ_WORKPATH" "$FUZZ_WORKPATH"
pyinstaller --log-level WARN --distpath "$OUT" --workpath="$FUZZ_WORKPATH" --onefile --name "$fuzzer_package" \\
    "$@" "$fuzzer_path"
chmod -x "$OUT/$fuzzer_package"
cat > "$OUT/$fuzzer_basename" <<WRAPPER
#!/bin/sh
# LLVMFuzzerTestOneInput for fuzzer detection.
this_dir=\\$(dirname "\\$0")
chmod +x "\\$this_dir/$fuzzer_package"
exec "\\$this_dir/$fuzzer_package" "\\$@"
WRAPPER
chmod +x "$OUT/$fuzzer_basename"
"""

PIP3 = """\
#!/bin/bash -eu
# `pip3 install ARGS`, into a scratch site directory instead of the system
[ "$1" = install ] && shift
exec "{python}" -m pip install -q --no-deps --target "$BPFDIFF_TEST_SITE" "$@"
"""


def _tracked_files() -> list[str]:
    proc = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                          capture_output=True, check=True)
    return [name for name in proc.stdout.decode().split("\0") if name]


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_one_target_per_profile(tmp_path):
    paths = write_targets(tmp_path)
    assert sorted(p.stem for p in paths) == sorted(target_name(p) for p in PROFILES)
    for profile in PROFILES:
        source = (tmp_path / f"{target_name(profile)}.py").read_text()
        assert source == target_source(profile) and f'"BPFDIFF_PROFILE"] = "{profile}"' in source
    proc = subprocess.run([sys.executable, "-m", "bpfdiff.fuzz.targets", str(tmp_path / "x"), "no-such-profile"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("bpfdiff: error: unknown profile")


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".clusterfuzzlite" / "build.sh").exists():
        pytest.skip("needs the repository (git) and .clusterfuzzlite/build.sh")
    pytest.importorskip("PyInstaller", reason="pyinstaller comes with the dev extra (`make test` installs it)")
    root = tmp_path_factory.mktemp("oss-fuzz")
    src, out, work, site, shims = (root / name for name in ("src", "out", "work", "site", "bin"))
    for directory in (src, out, work, site, shims):
        directory.mkdir()
    checkout = src / "bpfdiff"
    for name in _tracked_files():
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    _write_executable(shims / "compile_python_fuzzer", COMPILE_PYTHON_FUZZER)
    _write_executable(shims / "pip3", PIP3.format(python=sys.executable))
    env = {
        "PATH": os.pathsep.join([str(shims), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HOME": os.environ.get("HOME", str(root)),
        "SRC": str(src), "OUT": str(out), "WORK": str(work), "SANITIZER": "address",
        "BPFDIFF_TEST_SITE": str(site),
        "PYTHONPATH": str(site),             # pip3 installed bpfdiff there
        "BPFDIFF_FUZZ_PROFILES": PROFILE,    # one build in the suite
    }
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_NO_INDEX"):
        if key in os.environ:
            env[key] = os.environ[key]
    proc = subprocess.run(["bash", str(checkout / ".clusterfuzzlite" / "build.sh")], cwd=src, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    binary = out / target_name(PROFILE)
    assert binary.exists() and os.access(binary, os.X_OK)
    assert (out / f"{target_name(PROFILE)}.pkg").exists()
    return binary


def _run_binary(binary: Path, cwd: Path, *flags: str, inject: str | None = None) -> subprocess.CompletedProcess:
    """The binary as ClusterFuzzLite runs it: no PYTHONPATH, no source tree around."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    if inject:
        env["BPFDIFF_INJECT"] = inject
    return subprocess.run([str(binary), *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_harness_runs_100_inputs_cleanly(harness, tmp_path):
    proc = _run_binary(harness, tmp_path, "-runs=100", "-seed=1")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Done 100 runs" in proc.stderr
    assert not list(tmp_path.glob("crash-*"))


def _diverging_input(bug: str) -> bytes:
    """Fuzzer bytes whose scenario diverges with ``bug`` (searched in this process, from a fixed seed)."""
    import random

    from bpfdiff.fuzz.checker import check_scenario
    from bpfdiff.fuzz.generate import scenario_from_bytes
    from bpfdiff.fuzz.oracle import EnginePool, run_oracle

    rng, pool = random.Random(1), EnginePool()
    try:
        for _ in range(500):
            data = bytes(rng.randrange(256) for _ in range(400))
            scenario = scenario_from_bytes(data, PROFILE)
            if check_scenario(scenario, PROFILE):
                continue
            # diverges with the bug, and without it shows nothing at all (not even a known kernel bug)
            if not run_oracle(scenario, profile=PROFILE, bugs=frozenset({bug}), pool=pool).ok and \
                    not run_oracle(scenario, profile=PROFILE, bugs=frozenset(), pool=pool).findings:
                return data
    finally:
        pool.close()
    raise AssertionError(f"no byte input shows {bug} on {PROFILE}")


def test_harness_finds_a_planted_bug_that_bpfdiff_run_replays(harness, tmp_path):
    """A seed corpus holding one input that shows the bug: the binary reports it as a crash, and only with the bug."""
    seeds, artifacts = tmp_path / "seeds", tmp_path / "artifacts"
    seeds.mkdir()
    artifacts.mkdir()
    data = _diverging_input(BUG)
    (seeds / "input").write_bytes(data)
    clean = _run_binary(harness, tmp_path, "-runs=0", str(seeds))     # the seeds alone, no planted bug
    assert clean.returncode == 0, (clean.stdout + clean.stderr)[-5000:]
    proc = _run_binary(harness, tmp_path, "-runs=200", "-seed=1", f"-artifact_prefix={artifacts}/", str(seeds),
                       inject=BUG)
    crashes = list(artifacts.glob("crash-*"))
    output = proc.stdout + proc.stderr      # atheris prints the uncaught exception on stdout
    assert proc.returncode != 0 and len(crashes) == 1, output[-5000:]
    assert "Uncaught Python exception" in output and "FindingError: divergence:linux-6.1:" in output, output[-5000:]
    replay = subprocess.run([sys.executable, "-m", "bpfdiff", "run", str(crashes[0]), "--profile", PROFILE,
                             "--inject", BUG], capture_output=True, text=True, timeout=300)
    assert replay.returncode == 1 and "ENGINES DIFFER" in replay.stdout, replay.stdout[-3000:]
    # and without the bug the engines agree on the same input: the finding is the planted bug
    agree = subprocess.run([sys.executable, "-m", "bpfdiff", "run", str(crashes[0]), "--profile", PROFILE],
                           capture_output=True, text=True, timeout=300)
    assert agree.returncode == 0, agree.stdout[-3000:]


def test_readme_describes_the_real_files():
    readme = (REPO / "README.md").read_text()
    for path in (".clusterfuzzlite/project.yaml", ".clusterfuzzlite/Dockerfile", ".clusterfuzzlite/build.sh",
                 ".github/workflows/cflite_pr.yml", ".github/workflows/cflite_batch.yml"):
        assert (REPO / path).exists(), path
        assert path in readme, path
    build = (REPO / ".clusterfuzzlite" / "build.sh").read_text()
    assert "--collect-all unicorn --collect-all capstone" in build
    assert "python3 -m bpfdiff.fuzz.targets" in build
