"""The scenario text format (``.scn``): a readable, diff-able form of :class:`Scenario`.

In the spirit of the conformance suite's ``.data`` files: sections start with a
line ``-- NAME``; ``#`` starts a comment line.  Example::

    # a direct tail call, filled and emptied
    -- maps
    jmp_table prog_array key_size=4 value_size=4 max_entries=4
    counters array key_size=4 value_size=8 max_entries=2
    -- prog target
    mov %r0, 42
    exit
    -- prog caller
    mov %r3, 0
    lddw %r2, map:jmp_table
    call 12
    mov %r0, 1
    exit
    -- prog late
    mov %r0, 2
    exit
    -- events
    update jmp_table 0 prog:target
    run caller                         # trailing comments are fine here
    delete jmp_table 0
    run caller mem=01 02 03 04
    update counters 1 = 08 07 06 05 04 03 02 01 flags=exist
    load late
    -- result
    0x2a
    -- meta
    profile linux-6.1

Sections (each at most once, except ``prog``; any order):

``maps``
    ``NAME KIND key_size=N value_size=N max_entries=N``; KIND is one of
    :data:`bpfdiff.scenario.MAP_KINDS`; ``key_size``/``value_size`` default to 4.
``prog NAME``
    the program in the assembler syntax of :mod:`bpfdiff.asm` (``lddw %r2,
    map:NAME`` loads a map).  ``prog NAME raw`` instead holds one slot per line
    as the little-endian u64 of ``struct bpf_insn`` (``0x...``, like a ``.data``
    file's ``-- raw``), optionally followed by ``map:NAME``: the printer falls
    back to it for slots the disassembler cannot express exactly.
``events``
    ``run PROG [mem=HEX BYTES]``, ``update MAP KEY prog:PROG [flags=F]``,
    ``update MAP KEY = HEX BYTES [flags=F]``, ``delete MAP KEY``, ``load PROG``.
    A KEY is an integer (stored little-endian in the map's ``key_size`` bytes)
    or ``hex:0a0b...`` for exact bytes; F is ``any``, ``noexist``, ``exist`` or
    a number.
``result``
    the expected R0 of the first run (one integer).
``error``
    the expected error text.
``meta``
    ``KEY VALUE`` lines (``profile``, ``inject``, ``seed``...): free-form
    settings recorded with a finding.
``prog_type``
    one word, what R1 is when a program runs: ``xdp`` (R1 is a ``struct
    xdp_md``, ``mem`` the packet) or ``raw`` (R1 = ``mem``, R2 = its length);
    without the section, :data:`bpfdiff.scenario.DEFAULT_PROG_TYPE`.

Every error is one line ``PATH:LINE:COL: message`` (:class:`ScenarioSyntaxError`),
assembler errors included, at their line in the file.  :func:`format_scenario`
and :func:`parse_scenario` are exact inverses for every valid scenario, except
that an :class:`Expect` with neither field is the same as no expectation.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bpfdiff.isa import Insn, InvalidInstruction, Program, check_program
from bpfdiff.limits import (
    MAX_EVENTS,
    MAX_INT_LITERAL,
    MAX_MEM_BYTES,
    MAX_PROGRAM_SLOTS,
    InputTooLarge,
    check_input_size,
    int_literal,
    quote,
    read_bounded,
)
from bpfdiff.maps import map_size_problem
from bpfdiff.scenario import (
    DEFAULT_PROG_TYPE,
    MAP_KINDS,
    PROG_TYPES,
    UPDATE_FLAGS,
    Delete,
    Event,
    Expect,
    Load,
    MapDef,
    Run,
    Scenario,
    Update,
)

SUFFIX = ".scn"
SECTION_PREFIX = "-- "
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_NAME = re.compile(NAME_PATTERN + r"\Z")
_TOKEN = re.compile(r"\S+")
_SLOT = struct.Struct("<BBhi")
_FLAG_NAMES = {value: name for name, value in UPDATE_FLAGS.items()}
_MAP_ATTRIBUTES = ("key_size", "value_size", "max_entries")
_MAP_DEFAULTS = {"key_size": 4, "value_size": 4}
# Sections that may appear once; `prog` sections repeat.
_SINGLE_SECTIONS = ("maps", "events", "result", "error", "meta", "prog_type")


class ScenarioSyntaxError(ValueError):
    """A scenario text that cannot be read; ``str()`` is one line ``PATH:LINE:COL: message``."""

    def __init__(self, source: str, line: int, col: int | None, message: str) -> None:
        # col is None only for a .data file's errors, which name a line only.
        where = f"{source}:{line}" if col is None else f"{source}:{line}:{col}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.col = col
        self.message = message


# -- parsing -------------------------------------------------------------------
@dataclass(slots=True)
class _Token:
    text: str
    col: int  # 1-based


@dataclass(slots=True)
class _Line:
    number: int  # 1-based line in the file
    text: str

    def tokens(self, strip_comment: bool = True) -> list[_Token]:
        text = self.text
        if strip_comment and "#" in text:
            text = text[: text.index("#")]
        return [_Token(m.group(), m.start() + 1) for m in _TOKEN.finditer(text)]


@dataclass(slots=True)
class _Section:
    name: str
    argument: list[_Token]
    header: _Line
    body: list[_Line]

    def content(self) -> Iterator[_Line]:
        """Body lines that are neither blank nor whole-line comments."""
        for line in self.body:
            stripped = line.text.strip()
            if stripped and not stripped.startswith("#"):
                yield line


class _Parser:
    def __init__(self, text: str, source: str, validate: bool) -> None:
        self.source = source
        self.validate = validate
        try:
            check_input_size(len(text), source)
        except InputTooLarge as exc:
            raise ScenarioSyntaxError(source, 1, 1, str(exc).removeprefix(f"{source}: ")) from None
        # A byte-order mark some editors put first is not text before a header.
        text = text.removeprefix("\ufeff")
        self.lines = [_Line(i + 1, t) for i, t in enumerate(text.splitlines())]

    def error(self, line: _Line | int, col: int, message: str) -> ScenarioSyntaxError:
        number = line.number if isinstance(line, _Line) else line
        return ScenarioSyntaxError(self.source, number, col, message)

    # -- sections -------------------------------------------------------------
    def sections(self) -> list[_Section]:
        sections: list[_Section] = []
        seen: dict[str, _Line] = {}
        for line in self.lines:
            if line.text.startswith(SECTION_PREFIX):
                tokens = line.tokens(strip_comment=False)[1:]
                if not tokens:
                    raise self.error(line, 1, "section header without a name")
                name = tokens[0].text
                if name != "prog" and name not in _SINGLE_SECTIONS:
                    known = ", ".join(("prog NAME",) + _SINGLE_SECTIONS)
                    raise self.error(line, tokens[0].col, f"unknown section '{name}' (known: {known})")
                if name in _SINGLE_SECTIONS:
                    if name in seen:
                        raise self.error(line, tokens[0].col,
                                         f"second '-- {name}' section (first at line {seen[name].number})")
                    if len(tokens) > 1:
                        raise self.error(line, tokens[1].col, f"'-- {name}' takes no argument")
                    seen[name] = line
                sections.append(_Section(name, tokens[1:], line, []))
            elif sections:
                sections[-1].body.append(line)
            else:
                stripped = line.text.strip()
                if stripped and not stripped.startswith("#"):
                    raise self.error(line, len(line.text) - len(line.text.lstrip()) + 1,
                                     "text before the first '-- ' section header")
        return sections

    def parse(self) -> Scenario:
        sections = self.sections()
        by_name = {s.name: s for s in sections if s.name != "prog"}
        maps = self.parse_maps(by_name["maps"]) if "maps" in by_name else {}
        programs = self.parse_programs([s for s in sections if s.name == "prog"], maps)
        events = self.parse_events(by_name["events"], maps, programs) if "events" in by_name else ()
        result = self.parse_result(by_name["result"]) if "result" in by_name else None
        error = self.parse_error_text(by_name["error"]) if "error" in by_name else None
        expect = Expect(result, error) if result is not None or error is not None else None
        meta = self.parse_meta(by_name["meta"]) if "meta" in by_name else ()
        prog_type = self.parse_prog_type(by_name["prog_type"]) if "prog_type" in by_name else DEFAULT_PROG_TYPE
        return Scenario(tuple(maps.values()), tuple(programs.values()), events, expect, meta, prog_type)

    # -- values ----------------------------------------------------------------
    def name(self, line: _Line, token: _Token, what: str) -> str:
        if not _NAME.match(token.text):
            raise self.error(line, token.col, f"bad {what} name '{quote(token.text)}'")
        return token.text

    def integer(self, line: _Line, token: _Token, what: str, text: str | None = None, col: int | None = None) -> int:
        text = token.text if text is None else text
        try:
            return int_literal(text, 0)
        except ValueError as exc:
            reason = f": {exc}" if len(text) > MAX_INT_LITERAL else ""
            raise self.error(line, token.col if col is None else col, f"bad {what} '{quote(text)}'{reason}") from None

    def hex_bytes(self, line: _Line, tokens: list[_Token], what: str) -> bytes:
        out = bytearray()
        for token in tokens:
            text = token.text
            if len(text) % 2 or not re.fullmatch(r"[0-9A-Fa-f]*", text):
                raise self.error(line, token.col, f"bad {what} bytes '{quote(text)}' (hex digits, two per byte)")
            out += bytes.fromhex(text)
        return bytes(out)

    def need(self, line: _Line, tokens: list[_Token], count: int, usage: str) -> None:
        if len(tokens) < count:
            col = len(line.text.rstrip()) + 1
            raise self.error(line, col, f"missing operand: expected '{usage}'")

    # -- maps ------------------------------------------------------------------
    def parse_maps(self, section: _Section) -> dict[str, MapDef]:
        maps: dict[str, MapDef] = {}
        usage = "NAME KIND key_size=N value_size=N max_entries=N"
        for line in section.content():
            tokens = line.tokens()
            self.need(line, tokens, 2, usage)
            name = self.name(line, tokens[0], "map")
            if name in maps:
                raise self.error(line, tokens[0].col, f"duplicate map '{name}'")
            kind = tokens[1].text
            if kind not in MAP_KINDS:
                raise self.error(line, tokens[1].col, f"unknown map kind '{kind}' (known: {', '.join(MAP_KINDS)})")
            values: dict[str, int] = {}
            columns: dict[str, int] = {}
            for token in tokens[2:]:
                key, eq, value = token.text.partition("=")
                if not eq or key not in _MAP_ATTRIBUTES:
                    raise self.error(line, token.col,
                                     f"bad map attribute '{quote(token.text)}' (known: {', '.join(_MAP_ATTRIBUTES)})")
                if key in values:
                    raise self.error(line, token.col, f"'{key}' given twice")
                number = self.integer(line, token, key, value, token.col + len(key) + 1)
                if number <= 0:
                    raise self.error(line, token.col + len(key) + 1, f"{key} must be positive, not {number}")
                values[key] = number
                columns[key] = token.col + len(key) + 1
            if "max_entries" not in values:
                raise self.error(line, len(line.text.rstrip()) + 1, "missing max_entries=N")
            sizes = {**_MAP_DEFAULTS, **values}
            # sizes the kernel refuses, or our engines cannot hold: bad input, not an engine crash
            problem = map_size_problem(kind, sizes["key_size"], sizes["value_size"], sizes["max_entries"])
            if problem is not None:
                raise self.error(line, columns.get(problem[0], tokens[1].col), f"map '{name}': {problem[1]}")
            maps[name] = MapDef(name, kind, sizes["key_size"], sizes["value_size"], sizes["max_entries"])
        return maps

    # -- programs ----------------------------------------------------------------
    def parse_programs(self, sections: list[_Section], maps: dict[str, MapDef]) -> dict[str, Program]:
        programs: dict[str, Program] = {}
        for section in sections:
            header = section.header
            if not section.argument:
                raise self.error(header, len(header.text.rstrip()) + 1, "missing program name: '-- prog NAME'")
            name = self.name(header, section.argument[0], "program")
            if name in programs:
                raise self.error(header, section.argument[0].col, f"duplicate program '{name}'")
            form = [t.text for t in section.argument[1:]]
            if form not in ([], ["raw"]):
                raise self.error(header, section.argument[1].col, f"unexpected '{' '.join(form)}' (only 'raw')")
            if form:
                insns, slot_lines = self.raw_program(section)
            else:
                insns, slot_lines = self.asm_program(section)
            if not insns:
                # BPF_PROG_LOAD with insn_cnt 0 is -E2BIG: there is nothing to run
                raise self.error(header, section.argument[0].col, f"prog {name}: no instructions")
            if len(insns) > MAX_PROGRAM_SLOTS:
                raise self.error(slot_lines[MAX_PROGRAM_SLOTS], 1,
                                 f"prog {name}: more than {MAX_PROGRAM_SLOTS} slots (bpfdiff's limit on a program)")
            self.check_map_references(section, insns, maps)
            if self.validate:
                try:
                    check_program(insns)
                except InvalidInstruction as exc:
                    line = slot_lines[exc.pc] if exc.pc < len(slot_lines) else header
                    col = len(line.text) - len(line.text.lstrip()) + 1 if line is not header else 1
                    raise self.error(line, col, f"prog {name}: {exc}") from None
            programs[name] = Program(name, tuple(insns))
        return programs

    def asm_program(self, section: _Section) -> tuple[list[Insn], list[_Line]]:
        """The program's slots, and for each the line it was assembled from."""
        from bpfdiff.asm import AsmError, assemble_with_lines

        first = section.header.number + 1
        text = "\n".join(line.text for line in section.body)
        try:
            insns, numbers = assemble_with_lines(text, source=self.source, first_line=first)
        except AsmError as exc:
            raise _reraised(exc, self.source, section.header.number) from None
        return insns, [section.body[number - first] for number in numbers]

    def raw_program(self, section: _Section) -> tuple[list[Insn], list[_Line]]:
        insns: list[Insn] = []
        lines: list[_Line] = []
        for line in section.content():
            tokens = line.tokens()
            if not tokens:
                continue
            value = self.integer(line, tokens[0], "slot")
            if not 0 <= value < 1 << 64:
                raise self.error(line, tokens[0].col, f"slot {quote(tokens[0].text)} is not a 64-bit value")
            opcode, regs, off, imm = _SLOT.unpack(value.to_bytes(8, "little"))
            map_name = None
            for token in tokens[1:]:
                kind, colon, ref = token.text.partition(":")
                if kind != "map" or not colon or map_name is not None:
                    raise self.error(line, token.col,
                                     f"unexpected '{quote(token.text)}' after a raw slot (only map:NAME)")
                map_name = self.name(line, _Token(ref, token.col + 4), "map")
            insns.append(Insn(opcode, regs & 0x0F, regs >> 4, off, imm, map_name))
            lines.append(line)
        return insns, lines

    def check_map_references(self, section: _Section, insns: list[Insn], maps: dict[str, MapDef]) -> None:
        for insn in insns:
            if insn.map is not None and insn.map not in maps:
                line, col = self.find_reference(section, insn.map)
                raise self.error(line, col, f"unknown map '{insn.map}'")

    def find_reference(self, section: _Section, map_name: str) -> tuple[_Line, int]:
        pattern = re.compile(r"map(?:_value)?:" + re.escape(map_name) + r"(?![A-Za-z0-9_.\-])")
        for line in section.body:
            match = pattern.search(line.text)
            if match:
                return line, match.start() + 1
        return section.header, 1

    # -- events ----------------------------------------------------------------
    def parse_events(self, section: _Section, maps: dict[str, MapDef],
                     programs: dict[str, Program]) -> tuple[Event, ...]:
        parsers: dict[str, Callable[[_Line, list[_Token]], Event]] = {
            "run": lambda line, tokens: self.run_event(line, tokens, programs),
            "update": lambda line, tokens: self.update_event(line, tokens, maps, programs),
            "delete": lambda line, tokens: self.delete_event(line, tokens, maps),
            "load": lambda line, tokens: self.load_event(line, tokens, programs),
        }
        events: list[Event] = []
        for line in section.content():
            tokens = line.tokens()
            verb = tokens[0]
            if verb.text not in parsers:
                raise self.error(line, verb.col, f"unknown event '{quote(verb.text)}' (known: {', '.join(parsers)})")
            if len(events) == MAX_EVENTS:
                raise self.error(line, verb.col, f"more than {MAX_EVENTS} events (bpfdiff's limit on a scenario)")
            events.append(parsers[verb.text](line, tokens))
        return tuple(events)

    def program_ref(self, line: _Line, token: _Token, programs: dict[str, Program]) -> str:
        if token.text not in programs:
            raise self.error(line, token.col, f"unknown program '{quote(token.text)}'")
        return token.text

    def map_ref(self, line: _Line, token: _Token, maps: dict[str, MapDef]) -> MapDef:
        if token.text not in maps:
            raise self.error(line, token.col, f"unknown map '{quote(token.text)}'")
        return maps[token.text]

    def key(self, line: _Line, token: _Token, mapdef: MapDef) -> bytes:
        if token.text.startswith("hex:"):
            return self.hex_bytes(line, [_Token(token.text[4:], token.col + 4)], "key")
        value = self.integer(line, token, "key")
        if not 0 <= value < 1 << (8 * mapdef.key_size):
            raise self.error(line, token.col, f"key {quote(token.text)} does not fit in {mapdef.key_size} bytes")
        return value.to_bytes(mapdef.key_size, "little")

    def run_event(self, line: _Line, tokens: list[_Token], programs: dict[str, Program]) -> Run:
        self.need(line, tokens, 2, "run PROG [mem=HEX BYTES]")
        prog = self.program_ref(line, tokens[1], programs)
        mem = b""
        if len(tokens) > 2:
            first = tokens[2]
            if not first.text.startswith("mem="):
                raise self.error(line, first.col, f"unexpected '{quote(first.text)}' (expected mem=HEX BYTES)")
            rest = [_Token(first.text[4:], first.col + 4)] + tokens[3:]
            mem = self.hex_bytes(line, rest, "mem")
            if len(mem) > MAX_MEM_BYTES:
                raise self.error(line, first.col, f"mem of {len(mem)} bytes (limit {MAX_MEM_BYTES})")
        return Run(prog, mem)

    def flags(self, line: _Line, tokens: list[_Token]) -> tuple[list[_Token], int]:
        """Split a trailing ``flags=F`` off an update's operands."""
        if not tokens or not tokens[-1].text.startswith("flags="):
            return tokens, 0
        token = tokens[-1]
        text = token.text[len("flags="):]
        if text in UPDATE_FLAGS:
            return tokens[:-1], UPDATE_FLAGS[text]
        value = self.integer(line, token, "flags", text, token.col + len("flags="))
        if not 0 <= value < 1 << 64:
            raise self.error(line, token.col + len("flags="), f"flags {quote(text)} out of range")
        return tokens[:-1], value

    def update_event(self, line: _Line, tokens: list[_Token], maps: dict[str, MapDef],
                     programs: dict[str, Program]) -> Update:
        usage = "update MAP KEY prog:PROG | update MAP KEY = HEX BYTES [flags=F]"
        operands, flags = self.flags(line, tokens[1:])
        self.need(line, [tokens[0], *operands], 4, usage)
        mapdef = self.map_ref(line, operands[0], maps)
        key = self.key(line, operands[1], mapdef)
        value_tokens = operands[2:]
        first = value_tokens[0]
        value: bytes | str
        if first.text.startswith("prog:"):
            if len(value_tokens) > 1:
                raise self.error(line, value_tokens[1].col, f"unexpected '{quote(value_tokens[1].text)}'")
            value = self.program_ref(line, _Token(first.text[5:], first.col + 5), programs)
        elif first.text == "=":
            value = self.hex_bytes(line, value_tokens[1:], "value")
        else:
            raise self.error(line, first.col, f"expected prog:NAME or '= HEX BYTES', not '{quote(first.text)}'")
        return Update(mapdef.name, key, value, flags)

    def delete_event(self, line: _Line, tokens: list[_Token], maps: dict[str, MapDef]) -> Delete:
        self.need(line, tokens, 3, "delete MAP KEY")
        self.no_more(line, tokens, 3)
        mapdef = self.map_ref(line, tokens[1], maps)
        return Delete(mapdef.name, self.key(line, tokens[2], mapdef))

    def load_event(self, line: _Line, tokens: list[_Token], programs: dict[str, Program]) -> Load:
        self.need(line, tokens, 2, "load PROG")
        self.no_more(line, tokens, 2)
        return Load(self.program_ref(line, tokens[1], programs))

    def no_more(self, line: _Line, tokens: list[_Token], count: int) -> None:
        if len(tokens) > count:
            raise self.error(line, tokens[count].col, f"unexpected '{quote(tokens[count].text)}'")

    # -- expectations and meta ---------------------------------------------------
    def parse_result(self, section: _Section) -> int:
        content = list(section.content())
        if not content:
            raise self.error(section.header, len(section.header.text) + 1, "empty '-- result' section")
        line = content[0]
        tokens = line.tokens()
        self.no_more(line, tokens, 1)
        if len(content) > 1:
            raise self.error(content[1], 1, "'-- result' holds one integer")
        value = self.integer(line, tokens[0], "result")
        if not -(1 << 63) <= value < 1 << 64:
            raise self.error(line, tokens[0].col, f"result {quote(tokens[0].text)} is not a 64-bit value")
        return value & ((1 << 64) - 1)

    def parse_prog_type(self, section: _Section) -> str:
        content = list(section.content())
        if not content:
            raise self.error(section.header, len(section.header.text) + 1,
                             f"empty '-- prog_type' section (one of: {', '.join(PROG_TYPES)})")
        line = content[0]
        tokens = line.tokens()
        self.no_more(line, tokens, 1)
        if len(content) > 1:
            raise self.error(content[1], 1, "'-- prog_type' holds one word")
        if tokens[0].text not in PROG_TYPES:
            raise self.error(line, tokens[0].col,
                             f"unknown program type '{tokens[0].text}' (known: {', '.join(PROG_TYPES)})")
        return tokens[0].text

    def parse_error_text(self, section: _Section) -> str:
        return "\n".join(line.text.strip() for line in section.content())

    def parse_meta(self, section: _Section) -> tuple[tuple[str, str], ...]:
        meta = []
        for line in section.content():
            stripped = line.text.strip()
            key, _, value = stripped.partition(" ")
            problem = _meta_key_problem(key)
            if problem:
                # the writer could not write it back (a finding's meta is rewritten)
                raise self.error(line, len(line.text) - len(line.text.lstrip()) + 1,
                                 f"meta key '{quote(key)}' {problem}")
            meta.append((key, value.strip()))
        return tuple(meta)


def _reraised(exc: Exception, source: str, fallback_line: int) -> ScenarioSyntaxError:
    """An assembler or .data error as a ScenarioSyntaxError, keeping its place in the file."""
    line, col, message = getattr(exc, "line", None), getattr(exc, "col", None), getattr(exc, "message", None)
    if isinstance(line, int) and isinstance(message, str):
        return ScenarioSyntaxError(source, line, col if isinstance(col, int) else None, message)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    match = re.match(re.escape(source) + r":(\d+):(\d+): (.*)\Z", text)
    if match:
        return ScenarioSyntaxError(source, int(match[1]), int(match[2]), match[3])
    return ScenarioSyntaxError(source, fallback_line, 1, text)


def parse_scenario(text: str, source: str = "<scenario>", *, validate: bool = True) -> Scenario:
    """Parse scenario text.  ``validate`` also checks every program with :func:`isa.check_program`."""
    return _Parser(text, source, validate).parse()


# -- printing ------------------------------------------------------------------
def format_scenario(scenario: Scenario) -> str:
    """The canonical text of a scenario; ``parse_scenario(format_scenario(s)) == s``."""
    maps = {m.name: m for m in scenario.maps}
    out: list[str] = []
    if scenario.maps:
        out.append("-- maps")
        out += [f"{_checked_name(m.name)} {m.kind} key_size={m.key_size} value_size={m.value_size} "
                f"max_entries={m.max_entries}" for m in scenario.maps]
    for prog in scenario.programs:
        out += _format_program(prog)
    if scenario.events:
        out.append("-- events")
        out += [format_event(event, maps) for event in scenario.events]
    expect = scenario.expect
    if expect is not None and expect.result is not None:
        out += ["-- result", f"0x{expect.result:x}"]
    if expect is not None and expect.error is not None:
        # an empty text (a section with only comments) is a header alone
        out += ["-- error", _checked_error_text(expect.error)] if expect.error else ["-- error"]
    if scenario.meta:
        out.append("-- meta")
        out += [_format_meta(key, value) for key, value in scenario.meta]
    if scenario.prog_type != DEFAULT_PROG_TYPE:       # the default goes without saying
        if scenario.prog_type not in PROG_TYPES:
            raise ValueError(f"program type {scenario.prog_type!r} cannot be written "
                             f"(known: {', '.join(PROG_TYPES)})")
        out += ["-- prog_type", scenario.prog_type]
    return "\n".join(out) + "\n"


def _checked_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"name {name!r} cannot be written in a scenario (expected {NAME_PATTERN})")
    return name


def _format_program(prog: Program) -> list[str]:
    from bpfdiff.asm import AsmError, assemble
    from bpfdiff.disasm import disassemble

    insns = list(prog.insns)
    header = f"-- prog {_checked_name(prog.name)}"
    try:
        text = disassemble(insns)
        if list(assemble(text, source=f"<prog {prog.name}>")) == insns:
            return [header, *text.rstrip("\n").split("\n")] if text.strip() else [header]
    except (AsmError, ValueError, KeyError, IndexError):
        pass  # not expressible in assembler syntax: write the slots themselves
    return [f"{header} raw", *(_format_raw_slot(insn) for insn in insns)]


def _format_raw_slot(insn: Insn) -> str:
    try:
        packed = _SLOT.pack(insn.opcode, (insn.src << 4) | insn.dst, insn.off, insn.imm)
    except struct.error as exc:
        raise ValueError(f"slot {insn} cannot be encoded: {exc}") from None
    if not (0 <= insn.dst < 16 and 0 <= insn.src < 16):
        raise ValueError(f"slot {insn} has a register outside 0..15")
    text = f"0x{int.from_bytes(packed, 'little'):016x}"
    return f"{text} map:{_checked_name(insn.map)}" if insn.map is not None else text


def _format_key(key: bytes, mapdef: MapDef | None) -> str:
    if mapdef is not None and len(key) == mapdef.key_size:
        return str(int.from_bytes(key, "little"))
    return f"hex:{key.hex()}"


def _format_bytes(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _format_flags(flags: int) -> str:
    if flags == 0:
        return ""
    return f" flags={_FLAG_NAMES.get(flags, flags)}"


def format_event(event: Event, maps: dict[str, MapDef]) -> str:
    """One event as its ``-- events`` line (``maps`` by name gives the key sizes)."""
    if isinstance(event, Run):
        return f"run {event.prog}" + (f" mem={_format_bytes(event.mem)}" if event.mem else "")
    if isinstance(event, Update):
        key = _format_key(event.key, maps.get(event.map))
        if isinstance(event.value, str):
            value = f"prog:{event.value}"
        else:
            value = f"= {_format_bytes(event.value)}".rstrip()
        return f"update {event.map} {key} {value}{_format_flags(event.flags)}"
    if isinstance(event, Delete):
        return f"delete {event.map} {_format_key(event.key, maps.get(event.map))}"
    if isinstance(event, Load):
        return f"load {event.prog}"
    raise TypeError(f"not an event: {event!r}")


def _breaks_line(text: str) -> bool:
    """Would reading ``text`` back split it into lines (``\n``, ``\r``, ``\x0c``, ``\u2028``...)?"""
    return bool(text) and text.splitlines() != [text]


def _checked_error_text(text: str) -> str:
    lines = text.split("\n")
    for line in lines:
        if _breaks_line(line) or not line.strip() or line != line.strip() or line.startswith(("#", SECTION_PREFIX)):
            raise ValueError(f"error text {text!r} cannot be written in a scenario "
                             "(non-blank lines without outer spaces, not starting with '#' or '-- ')")
    return text


def _meta_key_problem(key: str) -> str | None:
    """Why a meta key cannot be written in a scenario, or None (one rule for reader and writer)."""
    if not key or any(c.isspace() for c in key):
        return "is empty or holds blanks"
    if key.startswith(("#", "-")):
        return "starts with '#' or '-' (a comment, a section header or an option, not a key)"
    return None


def _format_meta(key: str, value: str) -> str:
    if _meta_key_problem(key):
        raise ValueError(f"meta key {key!r} cannot be written in a scenario: {_meta_key_problem(key)}")
    if _breaks_line(value) or value != value.strip():
        raise ValueError(f"meta value {value!r} cannot be written in a scenario (one line, no outer spaces)")
    return f"{key} {value}" if value else key


# -- files -----------------------------------------------------------------------
def read_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read a ``.scn`` scenario, or a conformance ``.data`` file as a one-program scenario."""
    path = Path(path)
    if path.suffix == ".data":
        from bpfdiff.datafile import DataFileError, read_datafile

        try:
            return read_datafile(path).to_scenario()
        except DataFileError as exc:
            raise _reraised(exc, str(path), 1) from None
    try:
        data = read_bounded(path)
    except InputTooLarge as exc:
        raise ScenarioSyntaxError(str(path), 1, 1, str(exc).removeprefix(f"{path}: ")) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ScenarioSyntaxError(str(path), line, 1, "not UTF-8 text") from None
    return parse_scenario(text, str(path))


def write_scenario(path: str | os.PathLike[str], scenario: Scenario) -> None:
    """Write a scenario atomically: a reader sees the old file or the whole new one."""
    path = Path(path)
    text = format_scenario(scenario)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = [
    "SUFFIX",
    "ScenarioSyntaxError",
    "format_event",
    "format_scenario",
    "parse_scenario",
    "read_scenario",
    "write_scenario",
]
