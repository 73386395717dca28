"""`bpfdiff fuzz` campaigns: clean engines exit 0, a planted bug exits 1 with a replayable finding."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bpfdiff.fuzz.campaign import Campaign, CampaignConfig

from bpfdiff.cli import main as cli_main
from bpfdiff.scenario_text import read_scenario

EXAMPLES = Path(__file__).parent.parent / "corpus" / "examples"


def test_bugs_command_lists_every_planted_bug(capsys):
    from bpfdiff.bugs import BUGS

    assert cli_main(["bugs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [bug.name for bug in BUGS]


def test_clean_campaign_exits_0_and_writes_no_findings(tmp_path):
    # linux-6.12 with its one known kernel bug fixed: nothing to find
    crashes = tmp_path / "crashes"
    config = CampaignConfig(runs=25, seed=3, profile="linux-6.12+3733f4be2870", crashes=crashes)
    stats = Campaign(config, status=None).run()
    assert stats.scenarios == 25 and sum(stats.findings.values()) == 0
    assert not crashes.exists() or not any(crashes.iterdir())


def test_the_loop_runs_with_the_fuzz_collector_thresholds_and_restores_them(tmp_path, monkeypatch):
    import gc

    from bpfdiff.fuzz import campaign

    seen = []
    step = campaign.Worker.step
    monkeypatch.setattr(campaign.Worker, "step", lambda self: seen.append(gc.get_threshold()) or step(self))
    before = gc.get_threshold()
    Campaign(CampaignConfig(runs=3, crashes=tmp_path / "c"), status=None).run()
    assert seen == [campaign.FUZZ_GC_THRESHOLDS] * 3 and campaign.FUZZ_GC_THRESHOLDS != before
    assert gc.get_threshold() == before


def test_clean_linux_6_12_campaign_finds_only_its_known_kernel_bug(tmp_path, capsys):
    crashes = tmp_path / "crashes"
    assert cli_main(["fuzz", "--runs", "25", "--seed", "3", "--profile", "linux-6.12", "--crashes", str(crashes),
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "25 scenarios" in out and "new: 0" in out
    assert {read_scenario(p).meta_dict["signature"] for p in crashes.glob("*.scn")} <= {
        "known:linux-6.12:3733f4be2870"}


def test_clean_linux_6_1_campaign_finds_only_its_known_kernel_bug(tmp_path, capsys):
    # the same campaign on linux-6.1 rediscovers 116e04ba1459 (tailcall hierarchy), which does not fail it
    crashes = tmp_path / "crashes"
    assert cli_main(["fuzz", "--runs", "25", "--seed", "3", "--crashes", str(crashes), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "findings: 0" not in out and "known:linux-6.1:116e04ba1459" in out
    written = sorted(crashes.glob("*.scn"))
    assert written and all(p.name.startswith("known-") for p in written)
    # ... and d7ba4cc900bf (the JIT's direct map-op calls return int), alone or with it
    signatures = {read_scenario(p).meta_dict["signature"] for p in written}
    assert "known:linux-6.1:116e04ba1459" in signatures
    assert signatures <= {"known:linux-6.1:116e04ba1459", "known:linux-6.1:d7ba4cc900bf",
                          "known:linux-6.1:d7ba4cc900bf+116e04ba1459"}


def test_injected_bug_exits_1_with_a_finding_that_replays(tmp_path, capsys):
    crashes = tmp_path / "crashes"
    # linux-6.12, whose known kernel bug (3733f4be2870) needs calls through empty slots at the
    # limit; a finding that shows it too could not replay clean, so such files are left out
    from bpfdiff.fuzz.oracle import run_oracle

    code = cli_main(["fuzz", "--runs", "40", "--inject", "poke-skip-delete", "--profile", "linux-6.12",
                     "--crashes", str(crashes), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1, out
    found = [p for p in sorted(crashes.glob("divergence-*.scn"))
             if run_oracle(read_scenario(p), profile="linux-6.12").ok]
    assert found, out
    scenario = read_scenario(found[0])
    meta = scenario.meta_dict
    assert meta["inject"] == "poke-skip-delete" and meta["profile"] == "linux-6.12"
    assert meta["signature"].startswith("divergence:linux-6.12:")
    assert found[0].with_suffix(".txt").read_text().startswith("signature: divergence:")
    # replays: `bpfdiff run` takes profile and bug from the meta and sees the divergence again
    assert cli_main(["run", str(found[0])]) == 1
    # ... and without the bug the engines agree on the very same file
    assert cli_main(["run", str(found[0]), "--inject", ""]) == 0
    capsys.readouterr()


def test_findings_are_capped_per_signature(tmp_path):
    crashes = tmp_path / "crashes"
    config = CampaignConfig(runs=80, inject=frozenset({"poke-skip-delete"}), crashes=crashes, max_per_signature=1)
    campaign = Campaign(config, status=None)
    stats = campaign.run()
    assert stats.findings["divergence"] > len(stats.signatures)      # seen more often than written
    per_signature: dict[str, int] = {}
    for path in crashes.glob("*.scn"):
        signature = read_scenario(path).meta_dict["signature"]
        per_signature[signature] = per_signature.get(signature, 0) + 1
    assert per_signature and max(per_signature.values()) == 1


def test_corpus_is_replayed_and_grows(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for example in EXAMPLES.glob("*.scn"):
        shutil.copy(example, corpus / example.name)
    before = {p.name for p in corpus.iterdir()}
    campaign = Campaign(CampaignConfig(runs=30, corpus=corpus, crashes=tmp_path / "c"), status=None)
    stats = campaign.run()
    # the only findings: the hierarchy example's (and generated) known kernel bug of linux-6.1
    assert stats.scenarios == 30 and set(stats.findings) <= {"known"}
    assert set(stats.signatures) <= {"known:linux-6.1:116e04ba1459", "known:linux-6.1:d7ba4cc900bf",
                                     "known:linux-6.1:d7ba4cc900bf+116e04ba1459"}
    added = {p.name for p in corpus.iterdir()} - before
    assert added and all(name.endswith(".scn") for name in added)
    for name in added:                      # every added entry is a readable scenario
        read_scenario(corpus / name)


def test_same_seed_same_findings(tmp_path):
    def signatures(directory: Path) -> dict[str, int]:
        config = CampaignConfig(runs=30, seed=11, inject=frozenset({"poke-retarget-stale"}), crashes=directory)
        return Campaign(config, status=None).run().signatures

    assert signatures(tmp_path / "a") == signatures(tmp_path / "b") != {}


def test_parallel_workers_and_status_line(tmp_path):
    """--jobs 2 in a real process: status on stderr, summary on stdout, findings written."""
    crashes = tmp_path / "crashes"
    proc = subprocess.run(
        [sys.executable, "-m", "bpfdiff", "fuzz", "--runs", "40", "--jobs", "2", "--inject", "tail-call-limit-ja",
         "--crashes", str(crashes)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "40 scenarios" in proc.stdout
    assert "[fuzz linux-6.1]" in proc.stderr and "divergences" in proc.stderr
    assert list(crashes.glob("divergence-*.scn"))


def test_bad_options_are_one_line_errors(capsys):
    assert cli_main(["fuzz", "--runs", "1", "--inject", "no-such-bug"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-bug" in err[0]
    assert cli_main(["fuzz", "--runs", "0"]) == 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_cleanly_with_a_summary_and_the_findings_kept(tmp_path, jobs):
    import signal
    import time

    crashes = tmp_path / "crashes"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpfdiff", "fuzz", "--time", "60", "--jobs", jobs, "--inject", "poke-skip-delete",
         "--crashes", str(crashes)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not list(crashes.glob("divergence-*.txt")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err[-2000:]
    assert out.startswith("interrupted after") and "Traceback" not in err
    saved = list(crashes.glob("divergence-*.scn"))
    assert saved and all(read_scenario(path).events for path in saved)
    assert not list(crashes.glob(".*.tmp"))
