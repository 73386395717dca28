"""The conformance suite through the interpreter, and the runner's own behaviour."""

from pathlib import Path

import pytest

from bpfdiff.conformance import FAIL, PASS, SKIP, run_conformance, run_conformance_files

SUITE = Path("/work/shared/conformance")
needs_suite = pytest.mark.skipif(not SUITE.is_dir(), reason="conformance suite not present")


@needs_suite
@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.5"])
def test_whole_suite_passes_through_the_interpreter(profile):
    report = run_conformance(SUITE, ["interp"], profile)
    failures = report.by_status(FAIL)
    assert not failures, "\n".join(f"{o.path}: {o.reason}" for o in failures)
    skipped = report.by_status(SKIP)
    # only files with a section we do not know are skipped, each with its reason
    for outcome in skipped:
        assert outcome.reason.startswith("unknown section '-- ")
    assert {Path(o.path).name for o in skipped} == {"call_unwind_fail.data", "callx.data", "mem-len.data"}
    counts = report.counts()["interp"]
    assert counts[PASS] == len(list(SUITE.glob("*.data"))) - len(skipped)
    assert report.ok


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_runner_reports_wrong_results_errors_and_bad_files(tmp_path):
    good = write(tmp_path, "good.data", "-- asm\nmov %r0, 3\nexit\n-- result\n0x3\n")
    wrong = write(tmp_path, "wrong.data", "-- asm\nmov %r0, 3\nexit\n-- result\n0x4\n")
    fault = write(tmp_path, "fault.data", "-- asm\nldxw %r0, [%r1]\nexit\n-- error\nout of bounds\n")
    fault_unexpected = write(tmp_path, "fault2.data", "-- asm\nldxw %r0, [%r1]\nexit\n-- result\n0x0\n")
    bad = write(tmp_path, "bad.data", "-- asm\nfrobnicate %r0\n-- result\n0x0\n")
    unknown = write(tmp_path, "unknown.data", "-- asm\nmov %r0, 1\nexit\n-- quux\n-- result\n0x1\n")
    report = run_conformance_files([good, wrong, fault, fault_unexpected, bad, unknown], ["interp"])
    status = {Path(o.path).name: (o.status, o.reason) for o in report.outcomes}
    assert status["good.data"][0] == PASS
    assert status["wrong.data"] == (FAIL, "expected r0=0x4, got r0=0x3")
    assert status["fault.data"][0] == PASS
    assert status["fault2.data"][0] == FAIL and "memory" in status["fault2.data"][1]
    assert status["bad.data"][0] == FAIL and "bad.data:2" in status["bad.data"][1]
    assert status["unknown.data"] == (SKIP, "unknown section '-- quux' at line 4")
    assert not report.ok
    text = report.format()
    assert "FAIL interp" in text and "interp (linux-6.1): 2 passed, 3 failed, 1 skipped" in text
