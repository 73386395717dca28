"""One bucket per planted bug, named after the engine that is wrong.

Each directory of ``tests/data/planted`` holds real findings of a 90-second
campaign of one planted bug -- one of each signature the campaign recorded,
and the known kernel bugs of linux-6.1 it also found.  Triage must put all of
the planted bug's findings into one bucket (the known kernel bugs are other
bugs, in buckets of their own), and that bucket's signature must name the
engine the bug lives in (``bpfdiff/bugs.py``): an interpreter bug is not a JIT
bug, a JIT bug hidden in a tail-call hierarchy that the profile's known bug
116e04ba1459 inflates is still the JIT's off-by-one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpfdiff.fuzz.oracle import KNOWN, EnginePool, blamed_engine, divergence_mechanism
from bpfdiff.fuzz.triage import triage

from bpfdiff.bugs import BUGS, BUGS_BY_NAME

PLANTED = Path(__file__).resolve().parent / "data" / "planted"


def test_every_planted_bug_has_a_crash_set() -> None:
    assert sorted(p.name for p in PLANTED.iterdir() if p.is_dir()) == sorted(bug.name for bug in BUGS)


@pytest.mark.parametrize("bug", [bug.name for bug in BUGS])
def test_a_planted_bug_is_one_bucket_named_after_its_engine(bug: str) -> None:
    crashes = PLANTED / bug
    buckets = triage(crashes)
    assert not [b for b in buckets if b.flaky], [b.signature for b in buckets]
    planted = [b for b in buckets if not b.signature.startswith(f"{KNOWN}:")]
    assert len(planted) == 1, [(b.signature, b.count) for b in buckets]
    (bucket,) = planted
    assert blamed_engine(bucket.signature) == BUGS_BY_NAME[bug].engine, bucket.signature
    # every finding the campaign did not record as a known kernel bug is in it
    recorded_new = {p.name for p in crashes.glob("*.scn") if not p.name.startswith(f"{KNOWN}-")}
    assert recorded_new <= {f.path.name for f in bucket.findings}
    # and every finding replays with the planted bug it was found with
    assert all(f.bugs == frozenset({bug}) for f in bucket.findings)


def test_blamed_engine_reads_every_kind_of_signature() -> None:
    assert blamed_engine("divergence:linux-6.1:control:jit@delete:direct") == "jit"
    assert blamed_engine("divergence:linux-6.1:control:interp@limit-1:any") == "interp"
    assert blamed_engine("divergence:linux-6.1:data:kernel-jit@odd:any") == "kernel-jit"
    assert blamed_engine("divergence:linux-6.1:data:-:any") is None
    assert blamed_engine("violation:linux-6.1:jit:tail call lands at the wrong offset into its target") == "jit"
    assert blamed_engine("known:linux-6.1:116e04ba1459") is None


def test_one_mechanism_is_one_bug_whichever_fields_show_it() -> None:
    """A stale site after a delete diverges in control fields on one input and only in data on
    another: the relation names the mechanism.  An unexplained divergence (``@ref``, ``@odd``)
    names the engine that is wrong: a 32-bit ALU result without its zero extension is returned
    wrong on one input and steers a branch around a tail call on another (alu32-no-zext)."""
    control = divergence_mechanism("divergence:linux-6.1:control:jit@delete:direct")
    assert control == divergence_mechanism("divergence:linux-6.1:data:jit@delete:direct") == \
        ("linux-6.1", "jit@delete", "direct")
    assert divergence_mechanism("divergence:linux-6.1:control:jit@retarget:direct") != control
    assert divergence_mechanism("divergence:linux-6.1:data:jit@landing:any") is not None
    assert divergence_mechanism("divergence:linux-6.1:control:jit@limit+1:any") is not None
    assert divergence_mechanism("divergence:linux-6.1:data:jit@ref:any") == \
        divergence_mechanism("divergence:linux-6.1:control:jit@ref:any") == ("linux-6.1", "jit@ref", "any")
    assert divergence_mechanism("divergence:linux-6.1:data:interp@ref:any") != \
        divergence_mechanism("divergence:linux-6.1:data:jit@ref:any")
    assert divergence_mechanism("divergence:linux-6.1:data:kernel-jit@odd:any") == \
        divergence_mechanism("divergence:linux-6.1:control:kernel-jit@odd:any") is not None
    assert divergence_mechanism("divergence:linux-6.1:data:-:any") is None
    assert divergence_mechanism("violation:linux-6.1:jit:tail call lands at the wrong offset into its target") is None


def test_without_the_planted_bug_only_known_kernel_bugs_remain() -> None:
    """The crash sets are findings of the planted bug: replayed clean, the engines agree or
    differ only as linux-6.1's own kernel does."""
    from bpfdiff.fuzz.oracle import run_oracle

    from bpfdiff.settings import load_finding

    pool = EnginePool()
    try:
        for path in sorted(PLANTED.glob("*/*.scn")):
            scenario, settings = load_finding(path, inject="")
            verdict = run_oracle(scenario, engines=settings.engines, profile=settings.profile, pool=pool)
            assert not verdict.new_findings, (path, [f.signature for f in verdict.findings])
    finally:
        pool.close()


def test_two_bugs_in_one_directory_stay_apart(tmp_path: Path) -> None:
    """A bug whose tail calls land one byte late overflows the stack as a counter lost in every
    subprogram would: its own self-check names it (``jit@landing``), so the two stay two buckets."""
    import shutil

    for bug in ("tail-call-offset", "subprog-counter-reset"):
        for path in (PLANTED / bug).glob("*.scn"):
            shutil.copy(path, tmp_path / f"{bug}--{path.name}")
    planted = [b for b in triage(tmp_path) if not b.signature.startswith(f"{KNOWN}:")]
    assert sorted((b.signature, sorted({f.path.name.split("--")[0] for f in b.findings})) for b in planted) == [
        ("divergence:linux-6.1:control:jit@landing:any", ["tail-call-offset"]),
        ("divergence:linux-6.1:control:jit@subprog-reset:any", ["subprog-counter-reset"]),
    ]
