"""Reader for the conformance suite's ``.data`` files.

A file is a list of sections, each opened by a ``-- NAME`` line; ``#`` lines
before the first section are comments (copyright headers)::

    -- asm        program text (bpfdiff.asm syntax)
    -- mem        input memory: hex bytes, whitespace separated, any number of lines
    -- result     expected R0: one integer, hex (0x...) or decimal
    -- error      expected error text
    -- raw        one 64-bit hex number per line: a slot as the little-endian u64
                  of struct bpf_insn; checked against the assembled asm
    -- c          C source the test was written from (kept as text)

Any other section name is recorded in :attr:`DataFile.unknown_sections` (the
suite has a few, e.g. ``-- no register offset``) so that a runner can skip the
file and say why, rather than run it with part of its meaning ignored.
Errors are :class:`DataFileError` with one line ``PATH:LINE: message``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bpfdiff import isa
from bpfdiff.asm import AsmError, assemble
from bpfdiff.isa import Insn, Program
from bpfdiff.limits import MAX_MEM_BYTES, InputTooLarge, check_input_size, int_literal, quote, read_bounded
from bpfdiff.scenario import PROG_RAW, Expect, Run, Scenario

KNOWN_SECTIONS = ("asm", "mem", "result", "error", "raw", "c")
U64_MASK = (1 << 64) - 1

# ``-- NAME``: the blank matters, so that C text like ``--i;`` in ``-- c`` stays text.
_HEADER_RE = re.compile(r"--\s+(\S.*?)\s*\Z")
_BYTE_RE = re.compile(r"[0-9a-fA-F]{1,2}\Z")
_INT_RE = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|[0-9]+)\Z")
_RAW_RE = re.compile(r"(0[xX])?[0-9a-fA-F]{1,16}\Z")


class DataFileError(ValueError):
    """A malformed ``.data`` file; ``str()`` is ``PATH:LINE: message`` (one line).

    Assembler errors keep their column too: ``PATH:LINE:COL: message``.
    """

    def __init__(self, path: str, line: int | None, message: str, col: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}" if col is None else f"{path}:{line}:{col}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.col = col
        self.message = message


@dataclass
class DataFile:
    path: str
    insns: list[Insn]
    mem: bytes = b""
    result: int | None = None          # unsigned 64-bit
    error: str | None = None
    raw: list[int] | None = None
    c_source: str | None = None
    unknown_sections: list[tuple[str, int]] = field(default_factory=list)   # (name, line)
    asm: str | None = None             # the ``-- asm`` text, as written

    @property
    def name(self) -> str:
        """The program name: the file's stem (``lddw`` for ``.../lddw.data``)."""
        return Path(self.path).stem

    def to_scenario(self) -> Scenario:
        """One program named after the file, no maps, one run over ``mem``.

        A conformance file keeps the uBPF convention it was written for (R1 =
        ``mem``, R2 = its length): the scenario's type is "raw".
        """
        program = Program(self.name, tuple(self.insns))
        return Scenario(
            maps=(),
            programs=(program,),
            events=(Run(program.name, self.mem),),
            expect=Expect(result=self.result, error=self.error),
            meta=(("datafile", self.path),),
            prog_type=PROG_RAW,
        )


@dataclass
class _Section:
    name: str
    line: int                                   # line number of the ``-- NAME`` header
    lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)


def _split_sections(text: str, path: str) -> list[_Section]:
    sections: list[_Section] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER_RE.match(line)
        if header is not None:
            sections.append(_Section(header.group(1), number))
        elif sections:
            sections[-1].lines.append((number, line))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise DataFileError(path, number, f"text before the first section: {line.strip()[:40]!r}")
    return sections


def _content_tokens(section: _Section) -> list[tuple[int, str]]:
    """(line, token) pairs of a data section, ``#`` comments removed."""
    tokens = []
    for number, line in section.lines:
        for token in line.split("#", 1)[0].split():
            tokens.append((number, token))
    return tokens


def _parse_mem(section: _Section, path: str) -> bytes:
    out = bytearray()
    for number, token in _content_tokens(section):
        if not _BYTE_RE.match(token):
            raise DataFileError(path, number, f"bad byte {quote(token)!r} in '-- mem' (expected hex like 0a)")
        if len(out) == MAX_MEM_BYTES:
            raise DataFileError(path, number, f"'-- mem' holds more than {MAX_MEM_BYTES} bytes (bpfdiff's limit)")
        out.append(int(token, 16))
    return bytes(out)


def _parse_result(section: _Section, path: str) -> int:
    tokens = _content_tokens(section)
    if len(tokens) != 1:
        line = tokens[1][0] if len(tokens) > 1 else section.line
        raise DataFileError(path, line, f"'-- result' needs exactly one integer, found {len(tokens)}")
    number, token = tokens[0]
    if not _INT_RE.match(token):
        raise DataFileError(path, number, f"bad result {quote(token)!r} (expected a hex or decimal integer)")
    digits = token.lstrip("+-")
    try:
        value = int_literal(digits, 16) if digits.lower().startswith("0x") else int_literal(digits, 10)
    except ValueError as exc:
        raise DataFileError(path, number, f"bad result: {exc}") from None
    if token.startswith("-"):
        value = -value
    if not -(1 << 63) <= value <= U64_MASK:
        raise DataFileError(path, number, f"result {quote(token)} does not fit in 64 bits")
    return value & U64_MASK


def _parse_raw(section: _Section, path: str) -> list[tuple[int, int]]:
    slots = []
    for number, token in _content_tokens(section):
        if not _RAW_RE.match(token):
            raise DataFileError(path, number, f"bad raw slot {quote(token)!r} (expected a 64-bit hex number)")
        slots.append((number, int(token, 16)))
    return slots


def _slot_u64(insn: Insn) -> int:
    return struct.unpack("<Q", isa.encode_insn(insn))[0]


def _raw_to_insns(raw: list[tuple[int, int]]) -> list[Insn]:
    data = b"".join(struct.pack("<Q", value) for _, value in raw)
    return isa.decode(data, validate=False)


def parse_datafile(text: str, source: str = "<data>") -> DataFile:
    """Parse the text of a ``.data`` file; ``source`` names it in errors and in the result."""
    try:
        check_input_size(len(text), source)
    except InputTooLarge as exc:
        raise DataFileError(source, None, str(exc).removeprefix(f"{source}: ")) from None
    seen: dict[str, _Section] = {}
    unknown: list[tuple[str, int]] = []
    for section in _split_sections(text, source):
        if section.name not in KNOWN_SECTIONS:
            unknown.append((section.name, section.line))
            continue
        if section.name in seen:
            raise DataFileError(source, section.line,
                                f"duplicate '-- {section.name}' section (first on line {seen[section.name].line})")
        seen[section.name] = section

    raw = _parse_raw(seen["raw"], source) if "raw" in seen else None
    asm_section = seen.get("asm")
    if asm_section is not None:
        try:
            insns = assemble(asm_section.text, source=source, first_line=asm_section.line + 1)
        except AsmError as err:
            raise DataFileError(source, err.line, err.message, err.col) from err
    elif raw is not None:
        insns = _raw_to_insns(raw)
    else:
        raise DataFileError(source, 1, "no '-- asm' section")

    if raw is not None and asm_section is not None:
        _check_raw(raw, insns, seen["raw"], source)

    return DataFile(
        path=source,
        insns=insns,
        mem=_parse_mem(seen["mem"], source) if "mem" in seen else b"",
        result=_parse_result(seen["result"], source) if "result" in seen else None,
        error=seen["error"].text.strip() if "error" in seen else None,
        raw=[value for _, value in raw] if raw is not None else None,
        c_source=seen["c"].text if "c" in seen else None,
        unknown_sections=unknown,
        asm=asm_section.text if asm_section is not None else None,
    )


def _check_raw(raw: list[tuple[int, int]], insns: list[Insn], section: _Section, path: str) -> None:
    """The ``-- raw`` slots must be exactly what the ``-- asm`` text assembles to."""
    for index, ((number, value), insn) in enumerate(zip(raw, insns, strict=False)):
        expected = _slot_u64(insn)
        if value != expected:
            raise DataFileError(path, number,
                                f"'-- raw' slot {index} is 0x{value:016x} but the asm assembles to 0x{expected:016x}")
    if len(raw) != len(insns):
        line = raw[len(insns)][0] if len(raw) > len(insns) else section.line
        raise DataFileError(path, line, f"'-- raw' has {len(raw)} slots but the asm assembles to {len(insns)}")


def read_datafile(path: str | Path) -> DataFile:
    """Read and parse one ``.data`` file."""
    path_text = str(path)
    try:
        text = read_bounded(path).decode("utf-8")
    except InputTooLarge as err:
        raise DataFileError(path_text, None, str(err).removeprefix(f"{path_text}: ")) from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise DataFileError(path_text, None, f"cannot read: {reason}") from err
    return parse_datafile(text, path_text)
