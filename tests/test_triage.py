"""Triage: bucketing a crash directory by signature, flaky findings, JSON output, reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from raw_scenarios import parse_raw, raw_text
from test_minimize import FINDINGS

from bpfdiff.fuzz.triage import FindingRecord, bucket_findings  # isort: skip

REPO = Path(__file__).resolve().parent.parent


# -- bucketing (pure) ---------------------------------------------------------------
def _record(name: str, signature: str | None, slots: int, recorded: str | None = None,
            mtime: float = 1000.0) -> FindingRecord:
    text = "-- prog p\n" + "mov %r0, 0\n" * (slots - 1) + "exit\n-- events\nrun p\n"
    return FindingRecord(Path(name), parse_raw(text), "linux-6.1", frozenset(), recorded, signature, mtime)


def test_bucketing_groups_by_signature_and_picks_the_smallest() -> None:
    records = [
        _record("a1", "sig-A", 9, mtime=50), _record("a2", "sig-A", 3, mtime=70), _record("a3", "sig-A", 5),
        _record("b1", "sig-B", 4),
        _record("gone", None, 2, recorded="sig-A"),
    ]
    buckets = bucket_findings(records)
    assert [(b.signature, b.count, b.flaky) for b in buckets] == [
        ("sig-A", 3, False), ("sig-B", 1, False), ("flaky: sig-A", 1, True)]
    assert buckets[0].reproducer.path.name == "a2"
    assert buckets[0].first_seen == 50
    # A flaky finding is listed, with the signature it was recorded with.
    assert buckets[2].findings[0].path.name == "gone"


def test_signatures_seen_together_merge_into_one_bucket() -> None:
    a = _record("a", "divergence:x", 4)
    a.all_signatures = ("divergence:x", "violation:v")
    v1, v2 = _record("v1", "violation:v", 3), _record("v2", "violation:v", 6)
    other = _record("o", "divergence:y", 2)
    buckets = bucket_findings([a, v1, v2, other])
    assert [(b.signature, b.count, b.related) for b in buckets] == [
        ("violation:v", 3, ["divergence:x"]), ("divergence:y", 1, [])]
    assert buckets[0].reproducer.path.name == "v1"
    assert len(bucket_findings([a, v1, v2, other], merge_related=False)) == 3


def test_a_finding_whose_replays_disagree_is_flaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools
    from types import SimpleNamespace

    import bpfdiff.fuzz.oracle as oracle_module
    from bpfdiff.fuzz.triage import replay_finding

    answers = itertools.cycle([SimpleNamespace(ok=False, signature="sig-A", findings=[]),
                               SimpleNamespace(ok=True, signature="", findings=[])])
    monkeypatch.setattr(oracle_module, "run_oracle", lambda *args, **kwargs: next(answers))
    path = tmp_path / "f.scn"
    path.write_text(raw_text("-- prog p\nmov %r0, 1\nexit\n-- events\nrun p\n-- meta\nsignature sig-A\n"))
    record = replay_finding(path)
    assert record.unstable and not record.reproduces and "unstable" in record.error
    (bucket,) = bucket_findings([record])
    assert bucket.flaky and bucket.signature == "flaky: unstable sig-A"


# -- real crash directories -------------------------------------------------------------
def _variants(bug: str) -> list[str]:
    """The same finding with different data (constants, memory): the same bug, the same signature."""
    base = FINDINGS[bug]
    return [base, base.replace("mov %r0, 42", "mov %r0, 43").replace("mov %r0, 10", "mov %r0, 12"),
            base.replace("mem=01 02 03 04", "mem=09 09").replace("0xffffffff00000001", "0x7fffffff00000003")]


def _crash_dir(root: Path, bugs: list[str], flaky: bool = False) -> Path:
    crashes = root / "crashes"
    crashes.mkdir()
    for bug in bugs:
        for n, text in enumerate(_variants(bug)):
            (crashes / f"{bug}-{n}.scn").write_text(text)
            (crashes / f"{bug}-{n}.txt").write_text("campaign report, not a finding\n")
    if flaky:
        # Recorded with poke-skip-delete, but there is no tail call: it cannot diverge (any more).
        (crashes / "stale.scn").write_text(raw_text(
            "-- prog p\nmov %r0, 1\nexit\n-- events\nrun p\n-- meta\nprofile linux-6.1\ninject poke-skip-delete\n"
            "signature old-signature\n"))
    return crashes


def _triage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bpfdiff", "triage", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_two_planted_bugs_give_exactly_two_buckets(tmp_path: Path) -> None:
    crashes = _crash_dir(tmp_path, ["poke-skip-delete", "alu32-no-zext"])
    run = _triage(str(crashes), "--reports", str(tmp_path / "reports"))
    assert run.returncode == 1, run.stderr           # findings reproduce
    lines = run.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["bucket", "count", "first", "seen"]
    assert lines[-1] == "6 findings, 2 distinct, 0 flaky"
    rows = lines[1:-1]
    assert len(rows) == 2 and all(row.split()[1] == "3" for row in rows)
    reports = sorted((tmp_path / "reports").glob("bucket-*.md"))
    assert [p.name for p in reports] == ["bucket-1.md", "bucket-2.md"]
    text = reports[0].read_text()
    for heading in ("## Divergence", "## Scenario", "## BPF listing", "## Outcomes per engine"):
        assert heading in text


def _generated_findings(crashes: Path, bug: str, count: int) -> None:
    """The first ``count`` generator seeds that diverge with ``bug`` on, written as a campaign would."""
    from dataclasses import replace

    from bpfdiff.fuzz.generate import scenario_from_seed
    from bpfdiff.fuzz.oracle import run_oracle

    from bpfdiff.scenario_text import write_scenario

    found = 0
    for seed in range(2000):
        scenario = scenario_from_seed(seed)
        verdict = run_oracle(scenario, bugs=frozenset({bug}))
        if verdict.ok or not run_oracle(scenario).ok:
            continue        # no finding, or linux-6.1's known kernel bug diverges there without the planted one
        meta = dict(scenario.meta) | {"inject": bug, "signature": verdict.signature}
        write_scenario(crashes / f"{bug}-seed{seed}.scn", replace(scenario, meta=tuple(meta.items())))
        found += 1
        if found == count:
            return
    raise AssertionError(f"fewer than {count} findings for {bug}")


def test_generated_findings_of_two_bugs_give_two_buckets(tmp_path: Path) -> None:
    # Real fuzzer output: one planted bug shows up as several symptoms (a stale
    # direct jump diverges, and the JIT's self-check flags the poke site);
    # replays that show both tie them into one bucket.
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    # (generator v5: the first 7 seeds that show the poke bug include both symptoms)
    _generated_findings(crashes, "poke-skip-delete", 7)
    _generated_findings(crashes, "alu32-no-zext", 4)
    buckets = json.loads(_triage(str(crashes), "--json", "--no-reports").stdout)
    assert sorted((b["count"], tuple(b["inject"])) for b in buckets) == [
        (4, ("alu32-no-zext",)), (7, ("poke-skip-delete",))]
    # Without merging, the poke bug's symptoms are separate signatures.
    split = json.loads(_triage(str(crashes), "--json", "--no-reports", "--no-merge").stdout)
    assert len(split) > 2


def test_json_output_has_two_buckets_with_counts(tmp_path: Path) -> None:
    crashes = _crash_dir(tmp_path, ["poke-retarget-stale", "alu32-no-zext"])
    run = _triage(str(crashes), "--json", "--no-reports")
    buckets = json.loads(run.stdout)
    assert len(buckets) == 2
    assert sorted(b["count"] for b in buckets) == [3, 3]
    assert not any(b["flaky"] for b in buckets)
    for b in buckets:
        assert {"signature", "count", "reproducer", "flaky"} <= set(b)
        assert Path(b["reproducer"]).exists()
    injected = {tuple(b["inject"]) for b in buckets}
    assert injected == {("poke-retarget-stale",), ("alu32-no-zext",)}


def test_flaky_finding_is_reported_not_dropped(tmp_path: Path) -> None:
    crashes = _crash_dir(tmp_path, ["alu32-no-zext"], flaky=True)
    run = _triage(str(crashes), "--json", "--no-reports")
    buckets = json.loads(run.stdout)
    flaky = [b for b in buckets if b["flaky"]]
    assert len(buckets) == 2 and len(flaky) == 1
    assert flaky[0]["count"] == 1 and flaky[0]["reproducer"].endswith("stale.scn")
    assert flaky[0]["signature"] == "flaky: old-signature"
    table = _triage(str(crashes), "--no-reports").stdout
    assert "(flaky)" in table and table.strip().endswith("4 findings, 1 distinct, 1 flaky")


def test_only_flaky_findings_exit_zero(tmp_path: Path) -> None:
    crashes = tmp_path / "c"
    crashes.mkdir()
    (crashes / "old.scn").write_text(raw_text("-- prog p\nmov %r0, 1\nexit\n-- events\nrun p\n"))
    run = _triage(str(crashes), "--no-reports")
    assert run.returncode == 0
    assert "1 findings, 0 distinct, 1 flaky" in run.stdout


def test_unreadable_file_is_its_own_flaky_bucket(tmp_path: Path) -> None:
    crashes = tmp_path / "c"
    crashes.mkdir()
    (crashes / "garbage.scn").write_text("-- prog p\nnot an instruction\n")
    run = _triage(str(crashes), "--json", "--no-reports")
    assert "Traceback" not in run.stderr
    (bucket,) = json.loads(run.stdout)
    assert bucket["flaky"] and bucket["signature"] == "unreadable"
    assert "garbage.scn" in bucket["errors"][0]


def test_triage_minimize_shrinks_each_reproducer(tmp_path: Path) -> None:
    crashes = _crash_dir(tmp_path, ["poke-skip-delete"])
    reports = tmp_path / "reports"
    run = _triage(str(crashes), "--json", "--minimize", "--reports", str(reports), "--quiet")
    (bucket,) = json.loads(run.stdout)
    assert bucket["reproducer"].startswith(str(reports)) and bucket["reproducer"].endswith(".min.scn")
    assert bucket["size"]["slots"] <= 12 and bucket["size"]["events"] <= 4
    # The crash directory itself only gained nothing: minimised files go next to the reports.
    assert sorted(p.name for p in crashes.iterdir() if p.suffix == ".scn") == [
        f"poke-skip-delete-{n}.scn" for n in range(3)]


def test_not_a_directory_is_one_line_error(tmp_path: Path) -> None:
    run = _triage(str(tmp_path / "missing"))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "missing" in run.stderr


def test_first_seen_prefers_meta_over_mtime(tmp_path: Path) -> None:
    crashes = _crash_dir(tmp_path, ["alu32-no-zext"])
    for p in crashes.glob("*.scn"):
        os.utime(p, (2_000_000_000, 2_000_000_000))
    first = crashes / "alu32-no-zext-0.scn"
    first.write_text(first.read_text() + "found 2024-01-02T03:04:05Z\n")
    (bucket,) = json.loads(_triage(str(crashes), "--json", "--no-reports").stdout)
    assert bucket["first_seen"] == "2024-01-02T03:04:05Z"
