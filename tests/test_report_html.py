"""The HTML triage report: self-contained, and renders in headless Chromium without console errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_triage import _crash_dir

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _render(page: Path) -> tuple[str, list[str]]:
    """The DOM Chromium built, and its console messages (errors included)."""
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def html_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    crashes = _crash_dir(root, ["poke-skip-delete", "alu32-no-zext"], flaky=True)
    out = root / "report.html"
    run = subprocess.run([sys.executable, "-m", "bpfdiff", "triage", str(crashes), "--html", str(out),
                          "--no-reports", "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 1, run.stderr
    return out


def test_html_is_self_contained(html_report: Path) -> None:
    text = html_report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<style>" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text), "external resource"
    assert "<script" not in text and "<link" not in text
    # What a kernel developer needs: per bucket the divergence, listing, traces, JIT image, pokes.
    assert text.count('<section class="bucket"') == 3
    for heading in ("Divergence", "Scenario", "BPF listing", "Outcomes per engine", "JIT image of",
                    "Poke sites after each event"):
        assert heading in text, heading
    assert "poke site" in text           # the direct tail-call site is marked in the image
    assert "flaky" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_detects_console_errors_at_all(tmp_path: Path) -> None:
    # The check below means something only if a broken page is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, console = _render(bad)
    assert any("undefinedFunction" in line for line in console)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium_without_console_errors(html_report: Path) -> None:
    dom, console = _render(html_report)
    assert console == []
    assert dom.count('class="bucket"') == 3
    assert "Poke sites after each event" in dom
