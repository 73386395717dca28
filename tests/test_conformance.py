"""The conformance suite through the interpreter, and the runner's own behaviour."""

import re
from pathlib import Path

import pytest

from bpfdiff.conformance import FAIL, PASS, REFUSED, SKIP, run_conformance, run_conformance_files
from bpfdiff.profiles import get_profile

SUITE = Path("/work/shared/conformance")
needs_suite = pytest.mark.skipif(not SUITE.is_dir(), reason="conformance suite not present")


# What a kernel without ISA v4 (before 6.6) refuses, by mnemonic, with its message.
V4_MNEMONICS = {
    r"\b(sdiv|smod)(32)?\b": "BPF_ALU uses reserved fields",
    r"\bmovsx\d+\b": "BPF_MOV uses reserved fields",
    r"\bldxs[bhw]\b": "BPF_LDX uses reserved fields",
    r"\b(bswap|swap)(16|32|64)\b": "unknown opcode d7",
    r"\bja32\b": "unknown opcode 06",
}
SHIFT = re.compile(r"^\s*(lsh|rsh|arsh)(32)?\s+%r\d+,\s*(-?\d+)\s*$", re.MULTILINE)
ATOMIC_BEYOND_ADD = re.compile(r"^\s*lock\s+(?!add)|^\s*lock\s+fetch|xchg", re.MULTILINE)


def expected_refusal(path: Path, profile: str) -> str | None:
    """What the profile's verifier says of a suite file, worked out from its text alone."""
    asm = path.read_text().split("-- asm", 1)[1].split("\n-- ", 1)[0]
    asm = "\n".join(line.split("#", 1)[0] for line in asm.splitlines())
    for pattern, message in V4_MNEMONICS.items():
        if message == "unknown opcode 06" and get_profile(profile).isa_ja32:
            continue        # gotol alone of ISA v4 loads on Debian's 6.1.192 (measured)
        if re.search(pattern, asm):
            return message
    for _, width, amount in SHIFT.findall(asm):
        if not 0 <= int(amount) < (32 if width else 64):
            return f"invalid shift {amount}"
    if profile == "linux-5.5" and ATOMIC_BEYOND_ADD.search(asm):
        return "BPF_XADD uses reserved fields"      # 5.5 had BPF_XADD (add, no fetch) only
    return None


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
    # refused by the profile's verifier: exactly the files with instructions its kernel lacks
    # (ISA v4 arrived in 6.6) or a constant shift by the operand width or more, with its message
    refused = {Path(o.path).name: o.reason for o in report.by_status(REFUSED)}
    expected = {path.name: expected_refusal(path, profile) for path in SUITE.glob("*.data")
                if path.name not in {Path(o.path).name for o in skipped}}
    expected = {name: message for name, message in expected.items() if message is not None}
    assert set(refused) == set(expected)
    for name, reason in refused.items():
        assert reason.endswith(": " + expected[name]), (name, reason)
    assert len(refused) >= 60
    counts = report.counts()["interp"]
    assert counts[PASS] == len(list(SUITE.glob("*.data"))) - len(skipped) - len(refused)
    assert report.ok


def test_a_program_the_verifier_refuses_is_refused_by_every_engine(tmp_path):
    # check_alu_op: "div by zero" for a constant divisor 0 -- the interpreter used to run
    # it (RFC 9669: the result is 0) while the JIT refused it; one verifier model now
    path = tmp_path / "div-by-zero-imm.data"
    path.write_text("-- asm\nmov32 %r0, 1\ndiv32 %r0, 0\nexit\n-- result\n0x0\n")
    report = run_conformance_files([path], ["interp", "jit"], "linux-6.1")
    assert [(o.engine, o.status, o.reason) for o in report.outcomes] == [
        ("interp", REFUSED, "prog div-by-zero-imm insn 1: div by zero"),
        ("jit", REFUSED, "prog div-by-zero-imm insn 1: div by zero")]
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
