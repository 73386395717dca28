"""`bpfdiff fuzz --jobs 2` under SIGKILL and SIGTERM: no process outlives the campaign.

Each campaign runs in its own session, so every process it starts -- the two
workers and multiprocessing's resource tracker -- is found by its process
group in /proc, whoever its parent is by then.  SIGTERM must act like Ctrl-C:
the summary is printed and every finding is kept; SIGKILL of the parent
leaves no orphan working on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfdiff.scenario_text import read_scenario

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

INJECT = "poke-skip-delete"   # found within seconds: there are findings to keep


def _group_members(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of process group ``pgid``: pid -> command line."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members[int(entry.name)] = cmdline
    return members


def _wait_until_gone(pgid: int, seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        members = _group_members(pgid)
        if not members:
            return {}
        time.sleep(0.2)
    return _group_members(pgid)


def _start_campaign(crashes: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpfdiff", "fuzz", "--time", "300", "--jobs", "2", "--inject", INJECT,
         "--crashes", str(crashes)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    # Running for real: both workers started and a finding already written.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if list(crashes.glob("divergence-*.txt")) and len(_group_members(proc.pid)) >= 3:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    pytest.fail(f"campaign did not get going: {err[-2000:]}")


@pytest.fixture
def campaign(tmp_path):
    crashes = tmp_path / "crashes"
    proc = _start_campaign(crashes)
    yield proc, crashes
    # whatever the test did, leave nothing behind
    if _group_members(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=30)


def test_sigkill_of_the_parent_leaves_no_process(campaign):
    proc, _ = campaign
    pgid = proc.pid
    workers = set(_group_members(pgid)) - {proc.pid}
    assert len(workers) >= 2, "two workers (and the resource tracker) expected"
    proc.send_signal(signal.SIGKILL)       # the parent only: nobody tells the workers
    proc.communicate(timeout=30)
    left = _wait_until_gone(pgid, 20)
    assert not left, f"processes outlived the campaign: {left}"


def _check_summary_and_findings(out: str, err: str, crashes: Path) -> None:
    assert out.startswith("interrupted after"), (out, err[-2000:])
    assert "Traceback" not in err
    assert not list(crashes.glob(".*.tmp"))
    saved = sorted(crashes.glob("*.scn"))
    assert saved and len(saved) == len(list(crashes.glob("*.txt")))
    signatures = {read_scenario(path).meta_dict["signature"] for path in saved}
    # every signature of the summary, with the file of its first finding
    listed = dict(re.findall(r"^\s+\d+\s+(\S.*?)  -> (\S+)$", out, re.MULTILINE))
    assert set(listed) == signatures, out
    for path in listed.values():
        assert Path(path).exists()
    first = sorted(crashes.glob("divergence-*.scn"))[0]
    replay = subprocess.run([sys.executable, "-m", "bpfdiff", "run", str(first)],
                            capture_output=True, text=True, timeout=120)
    assert replay.returncode == 1 and "ENGINES DIFFER" in replay.stdout, replay.stdout[-2000:]


@pytest.mark.parametrize("target", ["parent", "group"])
def test_sigterm_acts_like_ctrl_c(campaign, target):
    """SIGTERM to the parent (a CI timeout) or to the whole group (a service manager)."""
    proc, crashes = campaign
    if target == "parent":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-2000:]     # findings: exit 1, as after Ctrl-C
    _check_summary_and_findings(out, err, crashes)
    left = _wait_until_gone(proc.pid, 20)
    assert not left, f"processes outlived the campaign: {left}"
