"""Turn any input file the CLI accepts into a :class:`Scenario`.

Three kinds of file, told apart by name (``.data``, ``.scn``, libFuzzer's
``crash-<sha1>``...) and otherwise by content:

* a conformance ``.data`` file (or any text with a section only such files
  have -- ``asm``, ``raw``, ``mem``, ``c`` -- and no ``-- prog``): one
  program, run once -- :mod:`bpfdiff.datafile`;
* scenario text (:mod:`bpfdiff.scenario_text`);
* anything else -- bytes that are not UTF-8, or text without a ``-- `` section
  header -- is a fuzzer input such as an atheris crash artifact, turned into a
  scenario by the fuzzer's byte driver (:func:`bpfdiff.fuzz.generate.scenario_from_bytes`),
  exactly as the fuzzer did when it wrote the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from bpfdiff.limits import InputTooLarge, read_bounded
from bpfdiff.scenario import Scenario
from bpfdiff.scenario_text import SUFFIX, ScenarioSyntaxError, parse_scenario

# Sections that only a conformance .data file has (`result` and `error` are
# shared with scenarios).
DATAFILE_SECTIONS = frozenset({"asm", "raw", "mem", "c"})
_SECTION = re.compile(r"^-- (\S+)", re.MULTILINE)
# What libFuzzer (and so atheris) names the inputs it saves: crash-<sha1> etc.
_LIBFUZZER_ARTIFACT = re.compile(r"(crash|leak|timeout|oom|slow-unit|minimized-from)-[0-9a-f]{40}\Z")


class InputError(Exception):
    """An input file that cannot be used; ``str()`` is one line naming the file and place."""


def input_kind(path: str | os.PathLike[str], data: bytes) -> str:
    """``"data"``, ``"scenario"`` or ``"bytes"``: how :func:`load_input` reads this content.

    The name decides first (``.data``, ``.scn``, libFuzzer's artifact names),
    then the content: an artifact's bytes may happen to look like text.
    """
    name = Path(path).name
    if name.endswith(".data"):
        return "data"
    if name.endswith(SUFFIX):
        return "scenario"
    if _LIBFUZZER_ARTIFACT.match(name):
        return "bytes"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes"
    sections = set(_SECTION.findall(text))
    if not sections:
        return "bytes"
    return "data" if sections & DATAFILE_SECTIONS and "prog" not in sections else "scenario"


def load_input(path: str | os.PathLike[str], profile: str | None = None,
               warn: Callable[[str], None] | None = None,
               notice: Callable[[str], None] | None = None) -> Scenario:
    """Read a scenario, a ``.data`` file or a fuzzer byte input; errors are :class:`InputError`.

    ``profile`` only matters for byte inputs: the fuzzer generates what the
    profile allows, so an artifact replays under the profile it was found with.
    ``warn`` receives one line per part of the file that was read but has no
    effect (a ``.data`` file's unknown sections); ``notice`` one line when a
    file that is not named like a fuzzer artifact was read as fuzzer bytes
    (``bpfdiff run Makefile`` runs *some* scenario: the user should know).
    Files larger than :data:`bpfdiff.limits.MAX_INPUT_BYTES` are refused unread.
    """
    name = str(path)
    try:
        data = read_bounded(path)
    except InputTooLarge as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if notice is not None and input_kind(name, data) == "bytes" and not _LIBFUZZER_ARTIFACT.match(Path(name).name):
        notice(f"{name}: neither a scenario (no '-- ' section headers) nor a .data file: "
               "read as fuzzer bytes, run as the scenario the fuzzer generates from them")
    return scenario_from_input(data, name, profile, warn)


def scenario_from_input(data: bytes, name: str = "<input>", profile: str | None = None,
                        warn: Callable[[str], None] | None = None) -> Scenario:
    """What :func:`load_input` makes of a file's contents, for callers that hold the bytes.

    A fuzz harness that accepts both scenario texts and raw bytes should
    decode its inputs with this function, so that every crash artifact it
    writes replays as the same scenario with ``bpfdiff run ARTIFACT``.
    """
    kind = input_kind(name, data)
    if kind == "bytes":
        return _from_bytes(name, data, profile)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{name}:{line}: not UTF-8 text") from None
    if kind == "data":
        return _from_datafile(name, text, warn)
    try:
        return parse_scenario(text, name)
    except ScenarioSyntaxError as exc:
        raise InputError(str(exc)) from None


def _from_datafile(name: str, text: str, warn: Callable[[str], None] | None) -> Scenario:
    from bpfdiff.asm import AsmError
    from bpfdiff.datafile import DataFileError, parse_datafile

    try:
        datafile = parse_datafile(text, name)
    except (DataFileError, AsmError) as exc:
        raise InputError(_one_line(exc, name)) from None
    if warn is not None:
        for section, line in datafile.unknown_sections:
            warn(f"{name}:{line}: unknown section '-- {section}' ignored")
    return datafile.to_scenario()


def _from_bytes(name: str, data: bytes, profile: str | None) -> Scenario:
    # Imported here: the fuzzer (and atheris) are not needed to read text inputs.
    from bpfdiff.fuzz.generate import scenario_from_bytes

    try:
        return scenario_from_bytes(data, profile)
    except ValueError as exc:
        raise InputError(f"{name}: not a scenario, and the fuzzer's byte driver refused it: {exc}") from None


def _one_line(exc: Exception, name: str) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    return message if message.startswith(name) else f"{name}: {message}"
