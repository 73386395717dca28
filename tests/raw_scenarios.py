"""Scenario texts in the uBPF convention ("raw": R1 = ``mem``, R2 = its length) for tests.

Many tests exercise tail calls, pokes, traces and the oracle with programs
that run without a packet or read a key from R1's memory, the meaning every
scenario had before the XDP program type became the default.  Their meaning
is unchanged when they say ``-- prog_type raw``; the XDP context itself is
tested in test_xdp_context.py, test_checker_xdp.py and on the examples.
"""

from __future__ import annotations

from bpfdiff.scenario import Scenario
from bpfdiff.scenario_text import parse_scenario

RAW_SECTION = "-- prog_type\nraw\n"


def raw_text(text: str) -> str:
    """``text`` with the section that makes it a raw scenario (first: a test may append to its last section)."""
    return RAW_SECTION + text


def parse_raw(text: str, source: str = "<scenario>", **kwargs: bool) -> Scenario:
    """:func:`parse_scenario` of ``text`` as a raw scenario."""
    return parse_scenario(raw_text(text), source, **kwargs)
