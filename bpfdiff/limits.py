"""Bounds on what bpfdiff reads: one home for every size limit on input files.

Every reader (scenario text, ``.data`` files, fuzzer inputs, corpus loading)
refuses input past these limits early and cheaply -- before it parses a
large file, builds a long event list or starts an engine -- with a one-line
error that names the limit.  Where the kernel has a bound of its own it is
named beside ours; map sizes live with the maps (:mod:`bpfdiff.maps`).
"""

from __future__ import annotations

import os
from pathlib import Path

# A whole input file (scenario, .data file, fuzzer bytes).  The largest
# scenario the fuzzer writes is a few KiB; this leaves three orders of
# magnitude for hand-written ones.
MAX_INPUT_BYTES = 4 << 20
# Events of one scenario.  Each `run` executes up to a million instructions
# on every engine, so a longer list is a hang in practice, not a test.
MAX_EVENTS = 10_000
# Slots of one program.  The kernel takes up to BPF_COMPLEXITY_LIMIT_INSNS
# (1,000,000) from a privileged loader; our JIT port compiles in Python and
# keeps its passes' state per slot, so we stop well before.
MAX_PROGRAM_SLOTS = 1 << 16
# The memory a run gets (`run P mem=...`, a .data file's `-- mem`): engines
# map it and compare it after every run.
MAX_MEM_BYTES = 1 << 16
# Characters of one integer literal.  A 64-bit value takes at most 20 decimal
# or 18 hex characters; a longer literal is a typo or an attack on Python's
# int-to-str limit (4300 digits), which would turn printing it into a crash.
MAX_INT_LITERAL = 64
# Longest piece of input an error message quotes.
QUOTE_CHARS = 40


class InputTooLarge(ValueError):
    """An input past one of the limits above; ``str()`` is one line naming file and limit."""


def int_literal(text: str, base: int = 0) -> int:
    """``int(text, base)`` for a literal of at most :data:`MAX_INT_LITERAL` characters.

    Raises ValueError (one line, without quoting the whole literal) otherwise.
    """
    if len(text) > MAX_INT_LITERAL:
        raise ValueError(f"integer literal of {len(text)} characters (limit {MAX_INT_LITERAL})")
    return int(text, base)


def quote(text: str) -> str:
    """``text`` for an error message: long tokens are cut, with their length said."""
    if len(text) <= QUOTE_CHARS:
        return text
    return f"{text[:QUOTE_CHARS]}...({len(text)} characters)"


def check_file_size(path: str | os.PathLike[str]) -> None:
    """Refuse a file larger than :data:`MAX_INPUT_BYTES` before reading it (a stat, nothing more)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return  # the read that follows reports it with its own words
    check_input_size(len_or_size=size, name=str(path))


def check_input_size(len_or_size: int, name: str) -> None:
    if len_or_size > MAX_INPUT_BYTES:
        raise InputTooLarge(f"{name}: {len_or_size} bytes, larger than the limit on inputs "
                            f"({MAX_INPUT_BYTES} bytes)")


def read_bounded(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, refusing one larger than :data:`MAX_INPUT_BYTES` without reading it all."""
    check_file_size(path)
    with open(path, "rb") as handle:
        data = handle.read(MAX_INPUT_BYTES + 1)   # a file growing meanwhile, or a pipe
    check_input_size(len(data), str(path))
    return data
