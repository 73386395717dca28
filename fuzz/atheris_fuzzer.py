"""libFuzzer-compatible harness (atheris): input bytes -> scenario -> oracle; a finding is a crash.

Run it like any libFuzzer target::

    python -m bpfdiff.fuzz.atheris_fuzzer [libFuzzer flags] [CORPUS_DIR ...]

    python -m bpfdiff.fuzz.atheris_fuzzer -max_total_time=60 corpus-bytes/
    python -m bpfdiff.fuzz.atheris_fuzzer -runs=2000 -jobs=2 -fork=2 corpus-bytes/
    python -m bpfdiff.fuzz.atheris_fuzzer -merge=1 minimized/ corpus-bytes/
    python -m bpfdiff.fuzz.atheris_fuzzer -minimize_crash=1 -runs=10000 crash-<sha1>

Each input goes through :func:`bpfdiff.fuzz.generate.scenario_from_bytes` (the
byte driver: every byte string is a valid scenario, short inputs give small
ones), is checked (:func:`bpfdiff.fuzz.checker.check_scenario`; refused
inputs are skipped, never findings) and run by the oracle on the interpreter
and the JIT.  Any finding -- divergence, engine crash, JIT self-check
violation -- raises :class:`FindingError`, so libFuzzer writes the input as a
crash artifact (``crash-<sha1>``, or under ``-artifact_prefix``).

Environment (read once, at start):

``BPFDIFF_PROFILE``
    kernel profile, ``linux-6.1`` (default) or ``linux-5.5``;
``BPFDIFF_INJECT``
    comma-separated planted bugs to switch on (see ``bpfdiff bugs``).

An artifact replays with ``bpfdiff run ARTIFACT`` (the byte input is turned
into the same scenario); give it the same settings, through the same
variables (``BPFDIFF_PROFILE=linux-5.5 BPFDIFF_INJECT=poke-skip-delete
bpfdiff run crash-...``) or ``--profile`` / ``--inject``.

Coverage: atheris instruments ``bpfdiff.interp`` and ``bpfdiff.jit`` (the
code under test), so libFuzzer keeps inputs that reach new interpreter paths
or new JIT emitters.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import atheris

with atheris.instrument_imports(include=["bpfdiff.interp", "bpfdiff.jit"]):
    import bpfdiff.interp.engine  # noqa: F401 - imported here to be instrumented
    import bpfdiff.jit.engine  # noqa: F401 - imported here to be instrumented

from bpfdiff.fuzz.checker import check_scenario
from bpfdiff.fuzz.generate import scenario_from_bytes
from bpfdiff.fuzz.oracle import EnginePool, run_oracle

from bpfdiff.engine import EngineError
from bpfdiff.profiles import DEFAULT_PROFILE
from bpfdiff.settings import resolve_settings


class FindingError(Exception):
    """The engines disagreed (or one crashed): libFuzzer saves the input."""


def settings_from_env(env: Mapping[str, str] = os.environ) -> tuple[str, frozenset[str]]:
    """Profile and planted bugs from BPFDIFF_PROFILE / BPFDIFF_INJECT (:mod:`bpfdiff.settings`,
    as ``bpfdiff run`` reads them for an artifact); bad values are one-line errors."""
    settings = resolve_settings(None, env=env)
    return settings.profile, settings.bugs


PROFILE, BUGS = DEFAULT_PROFILE, frozenset()
POOL = EnginePool()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer harnesses use
    scenario = scenario_from_bytes(data, PROFILE)
    if check_scenario(scenario, PROFILE):
        return
    try:
        verdict = run_oracle(scenario, profile=PROFILE, bugs=BUGS, pool=POOL)
    except EngineError:
        return
    if verdict.new_findings:    # a known kernel bug of the profile is no finding (as in campaigns)
        finding = verdict.new_findings[0]
        raise FindingError(f"{finding.signature}\n{finding.detail}")


def main(argv: list[str] | None = None) -> None:
    global PROFILE, BUGS
    try:
        PROFILE, BUGS = settings_from_env()
    except ValueError as exc:
        print(f"bpfdiff atheris harness: {exc}", file=sys.stderr)
        sys.exit(2)
    args = list(sys.argv if argv is None else argv)
    if __spec__ is not None and args and args[0].endswith(".py"):
        # libFuzzer re-runs argv[0] through the shell for -merge, -fork and -jobs:
        # started with `python -m`, that must be the interpreter plus the module
        args[0] = f"{sys.executable} -m {__spec__.name}"
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
