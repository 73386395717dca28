"""Scenarios: the unit every engine runs and the fuzzer generates.

A scenario is a set of maps, a set of named programs and an ordered list of
events.  Programs refer to maps by name (pseudo map loads, :attr:`Insn.map`);
prog-array values name programs.  Everything here is plain, immutable data:
an engine in another process (the kernel under qemu) receives a scenario as
its text form (:mod:`bpfdiff.scenario_text`) and nothing else.

Loading: every program without an explicit :class:`Load` event is loaded, in
declaration order, before the first event.  A :class:`Load` event loads (and
for a JIT, compiles) its program at that point, so a program can be loaded
while a prog-array slot it tail-calls through is already filled -- the path
where the kernel's ``bpf_tail_call_direct_fixup`` patches the image at load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpfdiff.isa import Program

MAP_KINDS = ("array", "hash", "prog_array")

# What R1 is when a program runs (one type per scenario: the kernel's prog arrays
# only hold programs of one type).  "xdp": BPF_PROG_TYPE_XDP, R1 points at a
# read-only ``struct xdp_md`` and the run's bytes are the packet, reached
# through its data/data_end fields (:mod:`bpfdiff.xdp`); the kernel engines
# load every program so.  "raw": the uBPF convention of the conformance
# suite's ``.data`` files, R1 = the bytes themselves, R2 = their length; only
# our engines give it that meaning (the real verifier refuses R1 as memory).
PROG_XDP = "xdp"
PROG_RAW = "raw"
PROG_TYPES = (PROG_XDP, PROG_RAW)
# What a scenario is when it does not say (the text form omits it then).
DEFAULT_PROG_TYPE = PROG_XDP

# update flags (include/uapi/linux/bpf.h)
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
UPDATE_FLAGS = {"any": BPF_ANY, "noexist": BPF_NOEXIST, "exist": BPF_EXIST}


@dataclass(frozen=True, slots=True)
class MapDef:
    """A map as ``BPF_MAP_CREATE`` would get it.

    ``prog_array`` and ``array`` maps have 4-byte keys; a ``prog_array``'s
    values are program names here (fds to the kernel), its value_size is 4.
    """

    name: str
    kind: str
    key_size: int
    value_size: int
    max_entries: int


@dataclass(frozen=True, slots=True)
class Run:
    """Run a program once on ``mem``: the packet (xdp) or, for "raw" scenarios, R1's memory."""

    prog: str
    mem: bytes = b""


@dataclass(frozen=True, slots=True)
class Update:
    """``bpf_map_update_elem`` from user space: value is bytes, or a program name for prog arrays."""

    map: str
    key: bytes
    value: bytes | str
    flags: int = BPF_ANY


@dataclass(frozen=True, slots=True)
class Delete:
    map: str
    key: bytes


@dataclass(frozen=True, slots=True)
class Load:
    prog: str


Event = Run | Update | Delete | Load


@dataclass(frozen=True, slots=True)
class Expect:
    """What a ``.data`` file (or a hand-written scenario) says should happen."""

    result: int | None = None      # R0 of the first run, unsigned 64-bit
    error: str | None = None       # expected error text (``-- error``)


@dataclass(frozen=True, slots=True)
class Scenario:
    maps: tuple[MapDef, ...] = ()
    programs: tuple[Program, ...] = ()
    events: tuple[Event, ...] = ()
    expect: Expect | None = None
    # free-form settings recorded with a finding: profile, injected bug, seed...
    meta: tuple[tuple[str, str], ...] = field(default=())
    prog_type: str = DEFAULT_PROG_TYPE  # one of PROG_TYPES

    def program(self, name: str) -> Program:
        for prog in self.programs:
            if prog.name == name:
                return prog
        raise KeyError(name)

    def map(self, name: str) -> MapDef:
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)

    def load_order(self) -> tuple[list[str], dict[int, str]]:
        """Programs loaded up front (in order), and event index -> program for Load events."""
        explicit = {i: ev.prog for i, ev in enumerate(self.events) if isinstance(ev, Load)}
        later = set(explicit.values())
        upfront = [p.name for p in self.programs if p.name not in later]
        return upfront, explicit

    def size(self) -> tuple[int, int]:
        """(total BPF slots, number of events): what a minimiser reduces."""
        return sum(len(p.insns) for p in self.programs), len(self.events)


def key_u32(index: int) -> bytes:
    """The 4-byte key of an array or prog-array slot."""
    return (index & 0xFFFFFFFF).to_bytes(4, "little")
