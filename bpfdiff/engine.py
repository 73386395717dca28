"""The engine interface and the results every engine returns.

An engine loads a scenario's maps and programs once, applies its events in
order, and returns one :class:`EventOutcome` per event.  Nothing here assumes
that an engine is Python code in this process: a scenario goes in as data (its
text form will do), and outcomes come back as plain values that round-trip
through JSON (:meth:`EventOutcome.to_json` / :meth:`EventOutcome.from_json`),
so the kernel's interpreter and JIT under qemu fit the same interface.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from bpfdiff.isa import Insn
from bpfdiff.profiles import Profile
from bpfdiff.scenario import Scenario

# exit kinds
EXIT = "exit"
FAULT = "fault"
TIMEOUT = "timeout"

# fault kinds: the part of a fault that engines must agree on
FAULT_MEMORY = "memory"            # out-of-bounds or unmapped access
FAULT_CALL_DEPTH = "call-depth"    # more than MAX_CALL_FRAMES frames
FAULT_INVALID = "invalid-insn"     # executed something that is not an instruction
FAULT_UNSUPPORTED = "unsupported"  # helper or construct the engine does not model
# The run nested deeper than any verified program can (tail calls from
# subprograms that never stop): the kernel stack overflows.  Where exactly
# depends on each engine's frame sizes, so only the fact is compared.
FAULT_STACK_OVERFLOW = "stack-overflow"

DEFAULT_BUDGET = 1_000_000  # BPF instructions per run before a timeout

# A map's contents: sorted (key hex, value hex-or-program-name) pairs.
MapContents = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RunResult:
    r0: int                                   # unsigned 64-bit
    exit: str                                 # EXIT, FAULT or TIMEOUT
    tail_calls: int                           # tail calls taken in this run
    trace: tuple[str, ...]                    # programs entered, in order
    maps: tuple[tuple[str, MapContents], ...]  # every map, by name, after the run
    mem: bytes                                # the context/packet after the run
    fault_kind: str | None = None
    fault_pc: int | None = None               # BPF pc (slot) in fault_prog
    fault_prog: str | None = None
    fault_reason: str | None = None           # engine-specific detail, not compared

    # Fields an oracle compares, in the order it reports them.
    COMPARED = ("exit", "r0", "fault_kind", "fault_pc", "tail_calls", "trace", "maps", "mem")

    # When a run overflowed the stack, in any engine: how far it got before the
    # stack ran out is an engine detail, so only these are compared.
    COMPARED_ON_OVERFLOW = ("exit", "fault_kind")

    def compared_fields(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.COMPARED}
        if self.exit != EXIT:
            # R0 is not observable when a run did not reach an exit.
            values["r0"] = None
        return values


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What one event did: a run's result, or a map operation's return code."""

    index: int
    kind: str                       # "run", "update", "delete", "load"
    run: RunResult | None = None
    retval: int | None = None       # 0 or -errno for update/delete/load
    # Engine self-checks that failed after this event (e.g. a JIT poke site
    # whose bytes do not match its slot).  Not compared between engines:
    # each one is a finding by itself.
    violations: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.run is not None:
            data["run"]["mem"] = self.run.mem.hex()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventOutcome:
        run = data.get("run")
        if run is not None:
            run = dict(run)
            run["mem"] = bytes.fromhex(run["mem"])
            run["trace"] = tuple(run["trace"])
            run["maps"] = tuple((name, tuple(tuple(kv) for kv in contents)) for name, contents in run["maps"])
            run = RunResult(**run)
        return cls(index=data["index"], kind=data["kind"], run=run, retval=data.get("retval"),
                   violations=tuple(data.get("violations", ())))


class EngineError(Exception):
    """The scenario cannot be run by this engine (bad input, not a finding)."""


class ProgramRefused(EngineError):
    """The engine's loader -- for a kernel engine, the real verifier -- refused a program.

    ``message`` is the verifier's reason (the last meaningful line of its log),
    ``errno`` the positive errno of ``BPF_PROG_LOAD``.  When one engine refuses
    what the others load, that is a fidelity finding (our verifier model and
    the kernel's disagree), not a JIT bug.
    """

    def __init__(self, prog: str, message: str, errno: int = 13) -> None:
        super().__init__(f"program {prog!r} refused: {message}")
        self.prog = prog
        self.message = message
        self.errno = errno


class EngineUnsupported(EngineError):
    """By design this engine cannot run this scenario; it is left out of the comparison.

    Example: the kernel's interpreter refuses programs that mix bpf-to-bpf
    calls and tail calls ("tail_calls are not allowed in non-JITed programs
    with bpf-to-bpf calls").  Not a finding, but reported as a note.
    """


@dataclass(frozen=True, slots=True)
class PokeSite:
    """A patchable direct tail-call point of an image, as it is now.

    ``kind`` is ``site`` (the jump to the target) or ``bypass`` (6.1's jump
    over the pops while the slot is empty); ``expected`` is what the engine's
    own invariant says the bytes should be for the slot's current program
    (None when it has no opinion, e.g. a site not stable yet)."""

    insn_idx: int            # xlated pc of the tail call
    map: str
    key: int
    kind: str
    address: int
    stable: bool
    current: bytes
    expected: bytes | None = None


@dataclass(frozen=True, slots=True)
class ImageCode:
    """One function's machine code as it is in memory now (pokes applied).

    ``addrs`` is the kernel's ``addrs[]`` for it: the code of the function's
    instruction slot ``k`` is ``code[addrs[k]:addrs[k + 1]]``, what comes before
    ``addrs[0]`` is the prologue; ``pcs[k]`` is slot ``k``'s pc in the program as
    loaded.  Empty when the engine cannot tell.
    """

    func_index: int
    base: int
    code: bytes
    addrs: tuple[int, ...] = ()
    pcs: tuple[int, ...] = ()
    poke_sites: tuple[PokeSite, ...] = ()

    def pc_at(self, address: int) -> int | None:
        """The pc (program as loaded) whose code contains ``address``; None in the prologue or outside."""
        offset = address - self.base
        if not self.addrs or offset < self.addrs[0] or offset >= self.addrs[-1]:
            return None
        slot = bisect.bisect_right(self.addrs, offset) - 1
        return self.pcs[slot] if slot < len(self.pcs) else None

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + len(self.code)


@dataclass(frozen=True, slots=True)
class ProgramCode:
    """A loaded program as an engine compiled it: instructions after the verifier's rewrites
    (``xlated``) and one image per function (main program first)."""

    name: str
    xlated: tuple[Insn, ...]
    images: tuple[ImageCode, ...]


@dataclass(frozen=True, slots=True)
class Inspection:
    """The loaded programs' code after loading (``index`` None) or after event ``index``."""

    index: int | None
    outcome: EventOutcome | None
    programs: dict[str, ProgramCode]


class Engine(ABC):
    """Runs scenarios.  One instance may run many scenarios, one at a time."""

    name: str = "?"
    # The RunResult fields this engine can observe.  The oracle compares a
    # field only among the engines that observe it: the real kernel shows no
    # program trace, no tail-call count and no fault pc.
    observes: frozenset[str] = frozenset(RunResult.COMPARED)
    # Bits of R0 the engine reports: BPF_PROG_TEST_RUN returns a u32 retval,
    # so R0 is compared on its low ``min(r0_bits)`` bits across engines.
    r0_bits: int = 64
    # A real kernel runs as it was built: a profile's kernel-bug fix (``linux-6.1+COMMIT``) changes
    # our models, not it.  ``mirrors`` names the model engine it must then behave like (the
    # profile's model of that kernel, bugs included); None for the models themselves.
    mirrors: str | None = None
    # Profile fields whose values never change this engine's outcomes: the oracle's known-bug
    # probes reuse its outcomes under a fixed profile that differs only in these instead of
    # running it again (a fix of the JIT alone leaves the interpreter as it ran).  Empty, the
    # default: every field may matter.
    ignores_profile_fields: frozenset[str] = frozenset()

    @abstractmethod
    def execute(self, scenario: Scenario) -> list[EventOutcome]:
        """Load the scenario's maps and programs, apply every event, one outcome per event."""

    def unaffected_profile_fields(self, against: Profile | None = None) -> frozenset[str]:
        """Profile fields the outcomes of the last completed ``execute`` did not depend on: those
        it ignores, and those the engine reads only at points that scenario never reached with a
        value that matters (the oracle's known-bug probes then reuse the outcomes under a fix of
        them).  ``against``, a profile to run under instead: also the fields whose values it
        reads only where it can tell that they make no difference between its own profile and
        that one (the verifier model's answers are the same: a costlier question).  The
        default: :attr:`ignores_profile_fields`."""
        return self.ignores_profile_fields

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing
        """Release what the engine holds (an emulator, a VM); idempotent."""

    def submit(self, scenario: Scenario) -> None:  # noqa: B027 - optional hook, most engines run in-process
        """Start running ``scenario`` in the background (an engine in a VM), so that it overlaps
        the other engines; the next ``execute`` of the same scenario collects it.  Never raises:
        whatever goes wrong is raised again by ``execute``."""

    def take_incidents(self) -> list[tuple[str, BaseException | None]]:
        """What went wrong in the engine's own machinery and was recovered from during the last
        ``execute`` (a VM that died and was replaced): (a note, a crash to report or None)."""
        return []

    def inspect(self, scenario: Scenario, stop: int | None = None) -> Iterator[Inspection]:
        """Apply the scenario's events up to and including ``stop`` (default: all), yielding the
        loaded programs' code after loading and after every event -- what ``bpfdiff dump`` and
        the triage reports show.  Engines that have no code to show raise EngineUnsupported."""
        raise EngineUnsupported(f"engine {self.name} shows no program code")

    def symbolize(self, address: int) -> str | None:
        """What a code address or pointer of this engine's last scenario is, in the kernel's words:
        ``prog+0xOFF``, ``map:NAME``, ``map_value:NAME+0xOFF``, a kernel function (``bpf_map_lookup_elem``,
        ``__x86_indirect_thunk_rcx``); None when unknown."""
        return None


EngineFactory = Callable[..., Engine]
_REGISTRY: dict[str, tuple[str, str]] = {
    # name -> (module, factory attribute); imported lazily so that listing
    # engines does not start an emulator.
    "interp": ("bpfdiff.interp.engine", "InterpEngine"),
    "jit": ("bpfdiff.jit.engine", "JitEngine"),
    # The real kernel under qemu (bpfdiff/kernel/): needs `bpfdiff kernel setup`.
    "kernel-jit": ("bpfdiff.kernel.engine", "KernelJitEngine"),
    "kernel-interp": ("bpfdiff.kernel.engine", "KernelInterpEngine"),
}


def engine_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def make_engine(name: str, profile: str | Profile = "linux-6.1", **options: Any) -> Engine:
    """Create an engine by name (``interp``, ``jit``) for a kernel profile (a name, or a Profile)."""
    import importlib

    try:
        module_name, attr = _REGISTRY[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r} (known: {', '.join(_REGISTRY)})") from None
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(profile=profile, **options)
