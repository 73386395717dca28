"""The CLI frame, `bpfdiff run` and the outcome comparison it is built on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import bpfdiff.commands.run as run_command
import bpfdiff.engine as engine_module
from bpfdiff import cli
from bpfdiff.compare import Difference, compare_outcomes, format_difference
from bpfdiff.engine import EXIT, FAULT, FAULT_MEMORY, Engine, EventOutcome, RunResult
from bpfdiff.scenario import Run, Scenario

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


# -- bad input: one line on stderr, exit 2 ------------------------------------------
BAD_INPUTS = [
    # (file name, contents, expected error, as a regex after the path)
    ("malformed.scn", "-- prog p\nexit\n-- events\nrun p mem=xyz\n", r":4:11: bad mem bytes 'xyz'"),
    ("truncated.scn", "-- prog p raw\n0x00000001000000b7\n0x0000000000000218\n", r":3:1: prog p: .*truncated lddw"),
    ("opcode.scn", "-- prog p raw\n0x00000000000000ff\n", r":2:1: prog p: .*unknown opcode 0xff"),
    ("mnemonic.scn", "-- prog p\nmov %r0, 1\nfrob %r0\nexit\n", r":3:1: unknown mnemonic 'frob'"),
    ("register.scn", "-- prog p\nmov %r12, 1\nexit\n", r":2:5: bad register '%r12'"),
    ("noasm.data", "# no program here\n-- result\n0x1\n", r":1: no '-- asm' section"),
    ("truncated.data", "-- asm\nlddw %r0\nexit\n-- result\n0x0\n", r":2:1: "),
    ("raw_truncated.data", "-- raw\n0x0000000000000018\n-- result\n0x0\n", r": .*insn 0: truncated lddw"),
    ("raw_opcode.data", "-- raw\n0x00000000000000ff\n0x0000000000000095\n-- result\n0x0\n",
     r": .*insn 0: unknown opcode 0xff"),
    ("unknown_map.scn", "-- prog p\nlddw %r1, map:nope\nexit\n", r":2:11: unknown map 'nope'"),
]


@pytest.mark.parametrize(("name", "text", "pattern"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_run_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              name: str, text: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run_cli(capsys, "run", str(path))
    assert code == 2
    assert_one_line_error(err, re.escape(str(path)) + pattern)


def test_run_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", str(tmp_path / "absent.scn"))
    assert code == 2
    assert_one_line_error(err, re.escape(str(tmp_path / "absent.scn")) + r": cannot read")


def test_run_unknown_bug_and_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.scn"
    path.write_text("-- prog p\nmov %r0, 0\nexit\n-- events\nrun p\n")
    code, _, err = run_cli(capsys, "run", str(path), "--inject", "no-such-bug")
    assert code == 2
    assert_one_line_error(err, r"--inject: unknown bug no-such-bug")
    code, _, err = run_cli(capsys, "run", str(path), "--engines", "interp,qemu")
    assert code == 2
    assert_one_line_error(err, r"--engines: unknown engine qemu")


def test_meta_inject_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "meta.scn"
    path.write_text("-- prog p\nmov %r0, 0\nexit\n-- events\nrun p\n-- meta\ninject bogus\n")
    code, _, err = run_cli(capsys, "run", str(path))
    assert code == 2
    assert_one_line_error(err, re.escape(str(path)) + r": meta inject: unknown bug bogus")


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: object, **kwargs: object) -> Scenario:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_command, "load_finding", interrupted)
    code, _, err = run_cli(capsys, "run", "whatever.scn")
    assert code == 130
    assert err.strip() == "bpfdiff: interrupted"


def test_every_subcommand_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.available_commands():
        assert re.search(rf"^\s+{name}\s", out, re.MULTILINE), name
    assert set(cli.available_commands()) == set(cli.COMMANDS)


def test_python_dash_m_works() -> None:
    result = subprocess.run([sys.executable, "-m", "bpfdiff", "run", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "--engines" in result.stdout and "--inject" in result.stdout


# -- `run` against two scripted engines ----------------------------------------------
def run_result(r0: int, trace: tuple[str, ...] = ("p",), exit: str = EXIT, **extra: object) -> RunResult:
    return RunResult(r0=r0, exit=exit, tail_calls=len(trace) - 1, trace=trace, maps=(), mem=b"", **extra)


class ScriptedEngine(Engine):
    """Answers every run event with the next result of its script."""

    def __init__(self, results: list[RunResult]) -> None:
        self.results = results

    def execute(self, scenario: Scenario) -> list[EventOutcome]:
        outcomes = []
        for index, event in enumerate(scenario.events):
            if isinstance(event, Run):
                outcomes.append(EventOutcome(index, "run", run=self.results[index]))
            else:
                outcomes.append(EventOutcome(index, "update", retval=0))
        return outcomes


def use_engines(monkeypatch: pytest.MonkeyPatch, scripts: dict[str, list[RunResult]]) -> None:
    # engine names are checked where every command resolves its settings (bpfdiff.settings)
    monkeypatch.setattr(engine_module, "engine_names", lambda: tuple(scripts))
    monkeypatch.setattr(run_command, "make_engine", lambda name, **_: ScriptedEngine(scripts[name]))


SCENARIO = "-- prog p\nmov %r0, 42\nexit\n-- events\nrun p\nrun p\n-- result\n0x2a\n"


def test_run_agreeing_engines_exit_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.scn"
    path.write_text(SCENARIO)
    use_engines(monkeypatch, {"a": [run_result(42)] * 2, "b": [run_result(42)] * 2})
    code, out, _ = run_cli(capsys, "run", str(path), "--engines", "a,b")
    assert code == 0, out
    assert "[0] run p: r0=0x2a exit tail_calls=0 trace=p" in out
    assert out.strip().endswith("OK: a and b agree on 2 events and match the expected result")


def test_run_divergence_shows_fields_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.scn"
    path.write_text(SCENARIO)
    use_engines(monkeypatch, {
        "a": [run_result(42), run_result(42, ("p", "q"))],
        "b": [run_result(42), run_result(1)],
    })
    code, out, _ = run_cli(capsys, "run", str(path), "--engines", "a,b")
    assert code == 1
    assert "[1] run p: ENGINES DIFFER" in out
    assert "event 1 (run) r0:  a 0x2a | b 0x1" in out
    assert "event 1 (run) tail_calls:  a 1 | b 0" in out
    assert "event 1 (run) trace:  a p -> q | b p" in out
    assert "FAIL: 3 differences" in out


def test_run_expected_result_mismatch_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.scn"
    path.write_text(SCENARIO)
    use_engines(monkeypatch, {"a": [run_result(7)] * 2, "b": [run_result(7)] * 2})
    code, out, _ = run_cli(capsys, "run", str(path), "--engines", "a,b")
    assert code == 1
    assert "a: expected r0=0x2a, got 0x7" in out


def test_run_engine_crash_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.scn"
    path.write_text(SCENARIO)
    use_engines(monkeypatch, {"a": [run_result(42)] * 2, "b": []})  # b raises IndexError
    code, out, err = run_cli(capsys, "run", str(path), "--engines", "a,b")
    assert code == 1
    assert "engine b crashed: IndexError" in out
    assert "Traceback" not in out + err


# -- compare_outcomes ---------------------------------------------------------------
def outcome(index: int, run: RunResult | None = None, retval: int | None = None) -> EventOutcome:
    return EventOutcome(index, "run" if run else "delete", run=run, retval=retval)


def test_compare_agreeing_outcomes() -> None:
    same = [outcome(0, run_result(5)), outcome(1, retval=0)]
    assert compare_outcomes({"interp": same, "jit": list(same)}) == []
    assert compare_outcomes({"interp": same}) == []


def test_compare_reports_each_differing_field_in_order() -> None:
    fault = run_result(0, exit=FAULT, fault_kind=FAULT_MEMORY, fault_pc=3, fault_prog="p")
    differences = compare_outcomes({
        "interp": [outcome(0, run_result(5)), outcome(1, retval=0)],
        "jit": [outcome(0, fault), outcome(1, retval=-2)],
    })
    assert differences == [
        Difference(0, "run", "exit", {"interp": EXIT, "jit": FAULT}),
        Difference(0, "run", "r0", {"interp": 5, "jit": None}),  # r0 is not observable after a fault
        Difference(0, "run", "fault_kind", {"interp": None, "jit": FAULT_MEMORY}),
        Difference(0, "run", "fault_pc", {"interp": None, "jit": 3}),
        Difference(1, "delete", "retval", {"interp": 0, "jit": -2}),
    ]


def test_compare_ignores_engine_specific_fault_reason_and_r0_after_fault() -> None:
    a = run_result(1, exit=FAULT, fault_kind=FAULT_MEMORY, fault_pc=2, fault_reason="unicorn: UC_ERR_READ_UNMAPPED")
    b = run_result(9, exit=FAULT, fault_kind=FAULT_MEMORY, fault_pc=2, fault_reason="out of bounds read")
    assert compare_outcomes({"interp": [outcome(0, a)], "jit": [outcome(0, b)]}) == []


def test_compare_maps_mem_and_counts() -> None:
    a = RunResult(0, EXIT, 0, ("p",), (("m", (("00000000", "01"), ("01000000", "02"))),), b"\x00\x01")
    b = RunResult(0, EXIT, 0, ("p",), (("m", (("00000000", "01"), ("01000000", "03"))),), b"\x00\x02")
    differences = compare_outcomes({"interp": [outcome(0, a)], "jit": [outcome(0, b), outcome(1, retval=0)]})
    assert [(d.event_index, d.field) for d in differences] == [(0, "maps"), (0, "mem"), (1, "events")]
    maps_text = format_difference(differences[0])
    assert "01000000: 02" in maps_text and "01000000: 03" in maps_text
    assert "00000000" not in maps_text  # only the differing entry is shown
    assert "first difference at byte 1" in format_difference(differences[1])
    assert differences[2].values == {"interp": 1, "jit": 2}


# -- `conformance` ------------------------------------------------------------------
CONFORMANCE = ROOT.parent / "shared" / "conformance"
CLOSING_LINE = re.compile(r"\A\d+ passed, \d+ failed, \d+ skipped, \d+ refused by the verifier\Z")


def test_conformance_bad_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "conformance", str(tmp_path / "nowhere"))
    assert code == 2
    assert_one_line_error(err, re.escape(str(tmp_path / "nowhere")) + ": not a directory")


def test_conformance_runs_our_two_engines_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the kernel engines are opt-in (they boot a VM, and run XDP programs, not the suite's raw ones);
    # on linux-5.5, which has no real kernel, the default must work too
    (tmp_path / "good.data").write_text("-- asm\nmov %r0, 2\nexit\n-- result\n0x2\n")
    for profile in ("linux-6.1", "linux-5.5"):
        code, out, _ = run_cli(capsys, "conformance", str(tmp_path), "--profile", profile)
        lines = out.strip().splitlines()
        assert lines[0] == f"conformance: 1 files in {tmp_path}; engines interp, jit; profile {profile}"
        assert lines[-1] == "1 passed, 0 failed, 0 skipped, 0 refused by the verifier"
        assert code == 0


def test_conformance_failure_and_skip_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "good.data").write_text("-- asm\nmov %r0, 2\nexit\n-- result\n0x2\n")
    (tmp_path / "wrong.data").write_text("-- asm\nmov %r0, 1\nexit\n-- result\n0x2\n")
    (tmp_path / "odd.data").write_text("-- asm\nexit\n-- result\n0x0\n-- no register offset\n")
    # 6.1's check_alu_op: "invalid shift 48" -- refused by the verifier, for every engine alike
    (tmp_path / "shift.data").write_text("-- asm\nmov32 %r0, 1\nlsh32 %r0, 48\nexit\n-- result\n0x0\n")
    code, out, _ = run_cli(capsys, "conformance", str(tmp_path), "--engines", "interp,jit")
    lines = out.strip().splitlines()
    assert code == 1
    assert lines[0] == f"conformance: 4 files in {tmp_path}; engines interp, jit; profile linux-6.1"
    assert "FAIL wrong.data [interp]: expected r0=0x2, got r0=0x1" in lines
    assert "SKIP odd.data: unknown section '-- no register offset' at line 5" in lines
    assert "REFUSED shift.data: prog shift insn 1: invalid shift 48" in lines
    assert not any("good.data" in line for line in lines)
    assert lines[-1] == "1 passed, 1 failed, 1 skipped, 1 refused by the verifier"


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="conformance suite not present")
def test_conformance_suite_on_the_interpreter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "conformance", str(CONFORMANCE), "--engines", "interp")
    lines = out.strip().splitlines()
    assert CLOSING_LINE.match(lines[-1]), lines[-1]
    skipped = sorted(line.split(":")[0] for line in lines if line.startswith("SKIP "))
    # The only skips are the three files with the unknown `-- no register offset` section.
    assert skipped == ["SKIP call_unwind_fail.data", "SKIP callx.data", "SKIP mem-len.data"]
    assert code == 0, out


def test_trace_display_collapses_repeats() -> None:
    from bpfdiff.compare import format_trace

    assert format_trace(()) == "(none)"
    assert format_trace(("caller", "target")) == "caller -> target"
    assert format_trace(("main",) + ("loop",) * 33 + ("main",)) == "main -> loop x33 -> main"


def test_run_data_file_notes_unknown_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "odd.data"
    path.write_text("-- asm\nmov %r0, 42\nexit\n-- result\n0x2a\n-- odd section\n")
    use_engines(monkeypatch, {"a": [run_result(42, ("odd",))], "b": [run_result(42, ("odd",))]})
    code, out, _ = run_cli(capsys, "run", str(path), "--engines", "a,b")
    assert code == 0, out
    assert f"note: {path}:6: unknown section '-- odd section' ignored" in out
    assert "[0] run odd: r0=0x2a exit tail_calls=0 trace=odd" in out


def test_run_replays_a_fuzzer_byte_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    from bpfdiff.fuzz.generate import scenario_from_bytes

    data = bytes((7 * i + 3) % 256 for i in range(300))
    path = tmp_path / f"crash-{hashlib.sha1(data).hexdigest()}"   # libFuzzer's name: bytes, no note
    path.write_bytes(data)
    scenario = scenario_from_bytes(data)
    code, out, err = run_cli(capsys, "run", str(path))
    assert code in (0, 1), err
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}: {len(scenario.programs)} programs, {len(scenario.maps)} maps, "
                               f"{len(scenario.events)} events; profile linux-6.1")
    assert sum(1 for line in lines if re.match(r"\[\d+\] ", line)) == len(scenario.events)


def test_run_json_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = tmp_path / "s.scn"
    path.write_text(SCENARIO + "-- meta\nprofile linux-5.5\n")
    use_engines(monkeypatch, {"a": [run_result(42)] * 2, "b": [run_result(42), run_result(1)]})
    code, out, _ = run_cli(capsys, "run", str(path), "--engines", "a,b", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["profile"] == "linux-5.5"  # from the scenario's meta
    assert data["ok"] is False
    assert data["differences"] == [{"event": 1, "kind": "run", "field": "r0", "values": {"a": "0x2a", "b": "0x1"}}]
    replayed = [EventOutcome.from_json(item) for item in data["outcomes"]["b"]]
    assert [o.run.r0 for o in replayed if o.run] == [42, 1]


def test_memory_difference_shows_a_window() -> None:
    a = bytes(4096)
    b = bytearray(a)
    b[100] = 0xFF
    text = format_difference(Difference(0, "run", "mem", {"interp": a, "jit": bytes(b)}))
    assert "first difference at byte 100" in text
    lines = text.splitlines()[1:]
    assert lines[0].startswith("  interp  [96:128] 00 00 00 00 00")
    assert lines[1].startswith("  jit     [96:128] 00 00 00 00 ff")
    assert all(len(line) < 120 for line in lines)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["no-such-command"], ["run"], ["run", "x.scn", "--profile", "linux-9.9"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2, argv
        assert "usage: bpfdiff" in capsys.readouterr().err


def test_output_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    # Far more output than a pipe buffers, so the writer is still writing when the reader leaves.
    many = tmp_path / "many.scn"
    packet = " mem=" + " ".join(["00"] * 14)          # the smallest XDP packet
    many.write_text("-- prog p\nmov %r0, 1\nexit\n-- events\n" + f"run p{packet}\n" * 4000)
    script = (f"import sys; from bpfdiff.cli import main; "
              f"sys.exit(main(['run', {str(many)!r}, '--engines', 'interp']))")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=ROOT, bufsize=0)
    assert writer.stdout is not None and writer.stderr is not None
    writer.stdout.read(10)
    writer.stdout.close()  # like `| head -c 10`
    err = writer.stderr.read().decode()
    assert writer.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err
