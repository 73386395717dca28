"""The ``kernel-jit`` and ``kernel-interp`` engines: the real kernel, JIT on or off, in a qemu guest.

A scenario goes to the guest agent in one request (maps become real maps,
``load`` a real ``BPF_PROG_LOAD`` as XDP, ``update``/``delete`` real map
syscalls -- so the kernel re-patches its own images -- and ``run`` a
``BPF_PROG_TEST_RUN``) and every outcome comes back in one reply.

What the kernel shows: the return value (32 bits), the packet after the run
and every map after the run.  It shows no trace, no tail-call count and no
fault pc, so :attr:`observes` leaves those out and the oracle compares them
only among the engines that see them.

One guest per kernel per process, shared by both engines and started on
first use; ``--jobs N`` (N processes) gives N guests.  A guest that hangs or
panics while serving a scenario's request raises :class:`GuestCrashed` for
that scenario (a finding, with its console tail) and is replaced by a fresh
one.  A request the guest never started on (it died serving an earlier one,
or while idle) is run again on the fresh guest, with a note saying so; a
death no request is blamed for (idle, or serving a request nobody collects)
goes with that note as an incident, which the oracle makes a crash finding:
nothing is lost.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from bpfdiff import isa
from bpfdiff.engine import (
    EXIT,
    Engine,
    EngineError,
    EngineUnsupported,
    EventOutcome,
    ImageCode,
    Inspection,
    ProgramCode,
    ProgramRefused,
    RunResult,
)
from bpfdiff.isa import InvalidInstruction, Program, decode
from bpfdiff.kernel import protocol
from bpfdiff.kernel.guest import (
    BadScenario,
    Guest,
    GuestCrashed,
    GuestError,
    GuestLost,
    UnsupportedScenario,
    build_request,
)
from bpfdiff.kernel.image import SetupError, profile_kernel
from bpfdiff.profiles import Profile
from bpfdiff.scenario import Scenario

__all__ = ["GuestCrashed", "KernelEngine", "KernelInterpEngine", "KernelJitEngine", "guest_for"]

# The kernel's interpreter refuses these by design (kernel/bpf/verifier.c, check_max_stack_depth
# / fixup_call_args): a scenario with such a program cannot run on kernel-interp.
INTERP_REFUSALS = ("tail_calls are not allowed in non-JITed programs with bpf-to-bpf calls",
                   "callbacks are not allowed in non-JITed programs")

KERNEL_ENV = "BPFDIFF_KERNEL"
_T = TypeVar("_T")

_GUESTS: dict[str, Guest] = {}


def guest_for(kernel: str, lost: list[GuestLost] | None = None) -> Guest:
    """The process's guest for ``kernel``, booted on first use and again after it died.  A death
    nobody was told of (:attr:`GuestLost.unclaimed`) is appended to ``lost`` when given."""
    guest = _GUESTS.get(kernel)
    if guest is not None and not guest.dead:
        guest.notice_death()
    if guest is None or guest.dead:
        if guest is not None:
            guest.close()
            unclaimed = guest.unclaimed_death()
            if unclaimed is not None and lost is not None:
                lost.append(unclaimed)
        try:
            guest = Guest.start(kernel)
        except SetupError as exc:
            raise EngineError(f"kernel {kernel}: {exc}") from None
        _GUESTS[kernel] = guest
    return guest


@atexit.register
def close_guests() -> None:
    for guest in _GUESTS.values():
        guest.close()
    _GUESTS.clear()


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A scenario submitted to a guest whose reply is not collected yet."""

    scenario: Scenario
    guest: Guest
    ticket: int
    request: protocol.Request
    maps: list[tuple[int, int, int, int]]


class KernelEngine(Engine):
    jit = True
    observes = frozenset({"exit", "r0", "maps", "mem"})
    r0_bits = 32

    def __init__(self, profile: str | Profile = "linux-6.1", kernel: str | None = None, bugs: Any = (),
                 **_options: Any) -> None:
        if bugs:
            raise EngineError(f"{self.name}: planted bugs live in our engines; the real kernel has only its own")
        self.profile = profile if isinstance(profile, str) else profile.name
        self._pending: _Pending | None = None
        self._lost: list[GuestLost] = []
        try:
            self.kernel = kernel or os.environ.get(KERNEL_ENV) or profile_kernel(self.profile)
        except SetupError as exc:
            raise EngineError(str(exc)) from None

    def submit(self, scenario: Scenario) -> None:
        """Queue the scenario's request on the guest; ``execute`` collects the reply."""
        if self._pending is not None:   # a scenario submitted and never executed
            self._abandon(self._pending)
        self._pending = None
        try:
            _refuse_random(self.name, scenario)
            req, maps = build_request(scenario, self.jit, images=False, events=True)
            guest = guest_for(self.kernel, self._lost)
            self._pending = _Pending(scenario, guest, guest.submit(req.encode()), req, maps)
        except GuestLost as exc:   # the guest was found dead: execute() runs it on a fresh one
            self._lost.append(exc)
        except Exception:  # noqa: BLE001, S110 - execute() runs it again and raises what it raises
            pass

    def execute(self, scenario: Scenario) -> list[EventOutcome]:
        pending, self._pending = self._pending, None
        if pending is not None and pending.scenario is not scenario:
            self._abandon(pending)
            pending = None
        _refuse_random(self.name, scenario)
        with self._errors():
            if pending is not None:
                try:
                    # GuestCrashed when the guest died serving this request: the caller's finding
                    raw = pending.guest.collect(pending.ticket)
                except GuestLost as exc:   # it died before starting on it: run it on a fresh guest
                    self._lost.append(exc)
                else:
                    reply = protocol.decode_scenario_reply(raw, pending.request, pending.maps)
                    if reply.malformed:
                        raise protocol.ProtocolError("the agent could not parse our request")
                    return outcomes_from_reply(scenario, self.jit, reply)
            return self._on_a_guest(lambda guest: guest.execute(scenario, self.jit))

    def take_incidents(self) -> list[tuple[str, BaseException | None]]:
        """Each request of the last scenario run again on a fresh guest because its guest died
        before starting on it (why, as a note), with the death itself when no other request is
        blamed for it (it died idle, or serving an abandoned request): a crash to report."""
        lost, self._lost = self._lost, []
        return [(f"{self.name}: its guest was replaced: {exc}", exc.death if exc.unclaimed else None) for exc in lost]

    def _abandon(self, pending: _Pending) -> None:
        death = pending.guest.abandon(pending.ticket)
        if death is not None:
            self._lost.append(death)

    def _on_a_guest(self, call: Callable[[Guest], _T]) -> _T:
        """``call`` on the guest, once more on a fresh one if the guest is found dead first."""
        try:
            return call(guest_for(self.kernel, self._lost))
        except GuestLost as exc:
            self._lost.append(exc)
            return call(guest_for(self.kernel, self._lost))

    def inspect(self, scenario: Scenario, stop: int | None = None) -> Iterator[Inspection]:
        """The kernel's xlated program and JIT images of every loaded program, after loading and each event."""
        if stop is not None:
            scenario = dataclasses.replace(scenario, events=scenario.events[:stop + 1])
        with self._errors():
            req, maps = build_request(scenario, self.jit, images=False, events=True, info_after_each=True)
            reply = self._on_a_guest(lambda guest: guest.send(req, maps))
        code: dict[int, dict[str, ProgramCode]] = {}
        for kind, tag, body in reply.outcomes:
            if kind == "info":
                index, name = tag  # type: ignore[misc]
                code.setdefault(index, {})[name] = _program_code(name, body)  # type: ignore[arg-type]
        events = [item for item in reply.outcomes if item[0] != "info"]
        outcomes = outcomes_from_reply(scenario, self.jit, dataclasses.replace(reply, outcomes=events))
        yield Inspection(None, None, code.get(-1, {}))
        for index, outcome in enumerate(outcomes):
            yield Inspection(index, outcome, code.get(index, {}))

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except BadScenario as exc:
            raise EngineError(str(exc)) from None
        except UnsupportedScenario as exc:
            raise EngineUnsupported(f"{self.name}: {exc}") from None
        except GuestCrashed:
            raise
        except GuestError as exc:
            raise EngineError(f"{self.name}: {exc}") from None


def random_folded(prog: Program, pc: int) -> bool:
    """Whether the instruction after the helper call at ``pc`` makes R0 independent of its value.

    get_prandom_u32 returns a u32 in a u64 (``BPF_CALL_0``), so shifting R0 right by 32..63
    leaves 0; moving a constant into R0, or and-ing or multiplying it by 0, forgets it.  With
    every call folded at once, a random number never lives beyond the instruction after its call,
    and nothing compared (R0, memory, maps, the tail calls taken) can depend on it -- whatever
    jumps to that instruction brings a value that is not random either.
    """
    if pc + 1 >= len(prog.insns):
        return False
    fold = prog.insns[pc + 1]
    if fold.dst != 0 or fold.cls not in (isa.BPF_ALU64, isa.BPF_ALU) or fold.source != isa.BPF_K:
        return False
    op = fold.op
    if op == isa.BPF_MOV:
        return fold.off == 0   # a plain move of the constant (off 8/16/32 would be ISA v4 movsx)
    if op in (isa.BPF_AND, isa.BPF_MUL):
        return fold.imm == 0
    return fold.cls == isa.BPF_ALU64 and op in (isa.BPF_RSH, isa.BPF_ARSH) and \
        32 <= fold.imm <= 63


def _refuse_random(engine: str, scenario: Scenario) -> None:
    """The kernel's get_prandom_u32 (bpf_user_rnd_u32) draws from per-CPU state it seeds at random
    on first use; our engines draw from the run's seeded generator.  Unless the program forgets
    the number at once (:func:`random_folded`, what the generator emits), a run that calls it
    cannot be compared with ours (the 10-minute campaign's largest bucket of false divergences),
    so the engine is left out of such scenarios instead."""
    for prog in scenario.programs:
        for pc, insn in enumerate(prog.insns):
            if insn.is_helper_call and insn.imm == isa.BPF_FUNC_get_prandom_u32 and not random_folded(prog, pc):
                raise EngineUnsupported(f"{engine}: program {prog.name!r} calls get_prandom_u32 at insn {pc} "
                                        "and keeps the number, which the kernel seeds at random: its results "
                                        "cannot be compared")


class KernelJitEngine(KernelEngine):
    name = "kernel-jit"
    jit = True
    mirrors = "jit"


class KernelInterpEngine(KernelEngine):
    name = "kernel-interp"
    jit = False
    mirrors = "interp"


def _program_code(name: str, images: protocol.Images) -> ProgramCode:
    try:
        xlated = tuple(decode(images.xlated, validate=False))
    except InvalidInstruction:
        xlated = ()
    funcs: list[ImageCode] = []
    offset = 0
    # An interpreted program reports a ksym but no image.
    for index, (base, length) in enumerate(zip(images.ksyms, images.func_lens, strict=False)):
        if not images.jited:
            break
        funcs.append(ImageCode(index, base, images.jited[offset:offset + length]))
        offset += length
    return ProgramCode(name, xlated, tuple(funcs))


def _map_contents(scenario: Scenario, reply: protocol.RunReply) -> tuple:
    names = [p.name for p in scenario.programs]
    maps = []
    for mapdef, entries in zip(scenario.maps, reply.maps, strict=True):
        pairs = []
        for key, value in entries:
            if isinstance(value, int):
                shown = names[value] if value < len(names) else f"?prog{value:#x}"
            else:
                shown = value.hex()
            pairs.append((key.hex(), shown))
        # bpfdiff.maps orders contents by key bytes
        maps.append((mapdef.name, tuple(sorted(pairs, key=lambda kv: bytes.fromhex(kv[0])))))
    return tuple(maps)


def outcomes_from_reply(scenario: Scenario, jit: bool, reply: protocol.ScenarioReply) -> list[EventOutcome]:
    engine = "kernel-jit" if jit else "kernel-interp"
    if reply.status == 2:
        name = scenario.maps[reply.failed_map].name if 0 <= reply.failed_map < len(scenario.maps) else "?"
        raise EngineUnsupported(f"{engine}: BPF_MAP_CREATE of {name!r} failed: {os.strerror(-reply.map_errno)}")
    outcomes = []
    for kind, tag, body in reply.outcomes:
        if kind == "load":
            assert isinstance(body, protocol.LoadReply)
            name = tag if isinstance(tag, str) else scenario.events[tag].prog  # type: ignore[union-attr,index]
            if body.retval:
                message = protocol.verifier_message(body.log)
                if not jit and any(m in (body.log or "") for m in INTERP_REFUSALS):
                    raise EngineUnsupported(f"{engine}: program {name!r}: {message}")
                raise ProgramRefused(str(name), message, -body.retval)
            if isinstance(tag, int):
                outcomes.append(EventOutcome(tag, "load", retval=0))
        elif kind in ("update", "delete"):
            assert isinstance(body, int) and isinstance(tag, int)
            outcomes.append(EventOutcome(tag, kind, retval=body))
        elif kind == "run":
            assert isinstance(body, protocol.RunReply) and isinstance(tag, int)
            if body.error:
                raise EngineUnsupported(f"{engine}: event {tag}: BPF_PROG_TEST_RUN failed: "
                                        f"{os.strerror(-body.error)}")
            outcomes.append(EventOutcome(tag, "run", run=RunResult(
                r0=body.r0, exit=EXIT, tail_calls=0, trace=(), maps=_map_contents(scenario, body),
                mem=body.packet)))
    expected = len(scenario.events)
    if len(outcomes) != expected:
        raise protocol.ProtocolError(f"{engine}: {len(outcomes)} outcomes for {expected} events")
    return outcomes
