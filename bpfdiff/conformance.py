"""Run the BPF conformance suite (``*.data`` files) through engines.

Each file holds one program, optional ``mem`` and the expected ``-- result``
(R0) or ``-- error``.  A file passes on an engine when the run exits with that
R0, or -- for an expected error -- when the engine refuses to load the program
or the run faults.  A file whose program the profile's kernel would not load
(the verifier model, :mod:`bpfdiff.verifier`: ISA v4 instructions before 6.6,
a constant shift by the operand width...) and that expects a result is
*refused*, counted apart from pass and fail -- when every engine refuses it;
an engine that refuses what another runs fails.  Files with a section this project does not know (e.g.
``-- no register offset``: the suite's marker for features of other
runtimes) are skipped, the reason naming the section and its line; nothing
else is skipped.  A file that cannot be read or assembled fails.

API::

    report = run_conformance("/path/to/conformance", ["interp", "jit"], "linux-6.1")
    report.ok                     # no failure on any engine
    report.counts()               # {"interp": {"pass": 300, "fail": 0, "skip": 5}, ...}
    print(report.format())        # one line per failure/skip + totals
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bpfdiff.asm import AsmError
from bpfdiff.datafile import DataFile, DataFileError, read_datafile
from bpfdiff.engine import DEFAULT_BUDGET, EXIT, Engine, EngineError, ProgramRefused, make_engine

PASS = "pass"
FAIL = "fail"
SKIP = "skip"
REFUSED = "refused"     # the profile's kernel does not load the program (every engine alike)
STATUSES = (PASS, FAIL, SKIP, REFUSED)


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """One file on one engine."""

    path: str
    engine: str
    status: str          # PASS, FAIL or SKIP
    reason: str = ""     # why it failed or was skipped; what happened for a pass


@dataclass
class ConformanceReport:
    directory: str
    profile: str
    engines: tuple[str, ...]
    outcomes: list[FileOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        table = {engine: dict.fromkeys(STATUSES, 0) for engine in self.engines}
        for outcome in self.outcomes:
            table[outcome.engine][outcome.status] += 1
        return table

    def by_status(self, status: str) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> bool:
        return not self.by_status(FAIL) and bool(self.outcomes)

    def format(self, verbose: bool = False) -> str:
        lines = []
        for outcome in self.outcomes:
            if verbose or outcome.status != PASS:
                lines.append(f"{outcome.status.upper():4} {outcome.engine:6} {outcome.path}: {outcome.reason}")
        for engine, counts in self.counts().items():
            lines.append(f"{engine} ({self.profile}): {counts[PASS]} passed, {counts[FAIL]} failed, "
                         f"{counts[SKIP]} skipped, {counts[REFUSED]} refused by the verifier")
        return "\n".join(lines)


def data_files(directory: str | Path) -> list[Path]:
    """The suite's ``*.data`` files, sorted by name."""
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    return sorted(path.glob("*.data"))


def judge(datafile: DataFile, engine: Engine) -> tuple[str, str]:
    """(status, reason) of one parsed file on one engine."""
    scenario = datafile.to_scenario()
    try:
        outcomes = engine.execute(scenario)
    except ProgramRefused as exc:
        if datafile.error is not None:
            return PASS, f"refused as expected: {exc.message}"
        return REFUSED, exc.message
    except EngineError as exc:
        if datafile.error is not None:
            return PASS, f"refused as expected: {exc}"
        return FAIL, f"refused: {exc}"
    run = outcomes[0].run
    if run is None:
        return FAIL, "the engine returned no run result"
    if datafile.error is not None:
        if run.exit != EXIT:
            return PASS, f"{run.exit} ({run.fault_kind}) as expected: {run.fault_reason}"
        return FAIL, f"expected error {datafile.error!r}, got exit with r0=0x{run.r0:x}"
    if datafile.result is None:
        return FAIL, "no '-- result' or '-- error' to compare with"
    if run.exit != EXIT:
        where = f" at {run.fault_prog}:{run.fault_pc}" if run.fault_pc is not None else ""
        return FAIL, (f"expected r0=0x{datafile.result:x}, got {run.exit}"
                      f"{f' ({run.fault_kind})' if run.fault_kind else ''}{where}: {run.fault_reason or ''}")
    if run.r0 != datafile.result:
        return FAIL, f"expected r0=0x{datafile.result:x}, got r0=0x{run.r0:x}"
    return PASS, f"r0=0x{run.r0:x}"


def run_conformance_files(paths: Iterable[str | Path], engines: Sequence[str], profile: str = "linux-6.1",
                          *, budget: int = DEFAULT_BUDGET, bugs: frozenset[str] = frozenset(),
                          directory: str = "") -> ConformanceReport:
    """Run the given files through each engine (created once per engine with ``make_engine``)."""
    report = ConformanceReport(directory, profile, tuple(engines))
    instances = {name: make_engine(name, profile=profile, bugs=bugs, budget=budget) for name in engines}
    try:
        for path in paths:
            report.outcomes.extend(_run_file(str(path), instances))
    finally:
        for instance in instances.values():
            instance.close()
    return report


def run_conformance(directory: str | Path, engines: Sequence[str], profile: str = "linux-6.1",
                    *, budget: int = DEFAULT_BUDGET, bugs: frozenset[str] = frozenset()) -> ConformanceReport:
    """Run every ``*.data`` file of ``directory`` through each engine."""
    return run_conformance_files(data_files(directory), engines, profile, budget=budget, bugs=bugs,
                                 directory=str(directory))


def _run_file(path: str, engines: dict[str, Engine]) -> list[FileOutcome]:
    try:
        datafile = read_datafile(path)
    except (DataFileError, AsmError) as exc:
        return [FileOutcome(path, name, FAIL, str(exc).splitlines()[0]) for name in engines]
    if datafile.unknown_sections:
        section, line = datafile.unknown_sections[0]
        reason = f"unknown section '-- {section}' at line {line}"
        return [FileOutcome(path, name, SKIP, reason) for name in engines]
    outcomes = []
    for name, engine in engines.items():
        try:
            status, reason = judge(datafile, engine)
        except Exception as exc:  # noqa: BLE001 - one engine crash must not hide the other files' results
            status, reason = FAIL, f"engine crashed: {type(exc).__name__}: {exc}"
        outcomes.append(FileOutcome(path, name, status, reason))
    refused = [o.engine for o in outcomes if o.status == REFUSED]
    if refused and len(refused) < len(outcomes):
        loaded = ", ".join(o.engine for o in outcomes if o.status != REFUSED)
        outcomes = [FileOutcome(o.path, o.engine, FAIL, f"refused ({o.reason}) where {loaded} loaded it")
                    if o.status == REFUSED else o for o in outcomes]
    return outcomes
