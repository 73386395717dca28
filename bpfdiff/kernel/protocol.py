"""The binary frames between the host and the guest agent (``agent.c``).

Every frame is ``u32 length`` + payload, little endian; a payload starts with
a command byte.  One ``SCENARIO`` request carries a whole scenario -- maps to
create, programs with their map relocations and BTF, and the events in
order -- and its reply carries every outcome, so a scenario costs one round
trip.  The agent closes every fd of a scenario after sending its reply (while the
host reads it), then sends the one-byte frame ``CLOSED``.

Scenario request::

    u8 'S', u8 flags (1: JIT on, 2: images after each load, 4: go on after a refusal,
                      0x80: tests only, crash the kernel when closing the fds)
    u32 nmaps,  nmaps  x (u32 map_type, key_size, value_size, max_entries)
    u32 nprogs, nprogs x (u32 ninsns, insns, u32 nrelocs, (u32 insn, u32 map) x nrelocs,
                          u32 btf_len, btf, u32 nfuncs, u32 func_start x nfuncs)
    u32 nevents, events: u8 kind, then
        LOAD   u32 prog
        UPDATE u32 map, u32 flags, u32 keylen, key, u8 0 + u32 len + value | u8 1 + u32 prog
        DELETE u32 map, u32 keylen, key
        RUN    u32 prog, u32 len, packet
        INFO   u32 prog                      (xlated and jited images of a loaded program)
        FIXED  i32 retval                    (an answer the host decides: malformed events)

Reply: ``u8 'S', u8 status`` (0 ok, 2 map creation failed: i32 -errno, u32 map),
then per processed event ``u8 kind`` and
        LOAD   i32 retval, then on failure u32 len + verifier log tail, on success images if asked
        UPDATE/DELETE/FIXED  i32 retval
        RUN    i32 test-run retval (-errno), u32 r0, u32 len, packet, then per map
               u32 count, count x (key, value | u32 program index (0xffffffff: unknown))
        INFO   images: u32 len + xlated, u32 len + jited, u32 n + u64 ksyms, u32 n + u32 func_lens
The agent stops after the first refused load; a trailing ``0xff`` means it
could not parse the request (a bug on our side).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bpfdiff.isa import BPF_PSEUDO_CALL, CALL_OPCODE, Program, encode

CMD_HELLO = 0x48
CMD_SCENARIO = 0x53
CMD_PING = 0x50
CMD_READ = 0x52      # a file of the guest (compare-jit reads /proc/kallsyms)
CMD_STATS = 0x54     # time the agent spent per syscall kind since the last CMD_STATS
CMD_DEBUG = 0x44     # + b"c": the agent crashes the kernel (sysrq c); + b"h": it stops answering (tests)
CMD_CLOSED = 0x43    # agent -> host, after a scenario's reply: its fds are closed

# CMD_STATS reply: u32 n, then n x (u64 calls, u64 ns); slot i < 40 is bpf command i
# (include/uapi/linux/bpf.h enum bpf_cmd), then the agent's own slots.
STAT_NAMES = {0: "BPF_MAP_CREATE", 1: "BPF_MAP_LOOKUP_ELEM", 2: "BPF_MAP_UPDATE_ELEM (data)",
              3: "BPF_MAP_DELETE_ELEM (data)", 4: "BPF_MAP_GET_NEXT_KEY", 5: "BPF_PROG_LOAD",
              10: "BPF_PROG_TEST_RUN", 15: "BPF_OBJ_GET_INFO_BY_FD", 18: "BPF_BTF_LOAD", 24: "BPF_MAP_LOOKUP_BATCH",
              40: "prog-array update", 41: "prog-array delete", 42: "close(prog)", 43: "close(map)",
              44: "scenario requests", 45: "agent idle (waiting for the host)"}

EV_LOAD, EV_UPDATE, EV_DELETE, EV_RUN, EV_INFO, EV_FIXED = 1, 2, 3, 4, 5, 6
FLAG_JIT = 1
FLAG_IMAGES_ON_LOAD = 2
FLAG_CONTINUE = 4      # keep loading after a refusal (compare-jit wants every program)
FLAG_PANIC_CLOSING = 0x80   # tests only: the agent crashes the kernel after the reply, before closing the fds

# include/uapi/linux/bpf.h enum bpf_map_type
MAP_TYPES = {"hash": 1, "array": 2, "prog_array": 3}
NO_PROG = 0xFFFFFFFF

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class ProtocolError(Exception):
    """A reply the host cannot parse."""


def func_starts(prog: Program) -> list[int]:
    """Main (0) and every bpf-to-bpf call target: the functions BTF func_info must describe."""
    starts = {0}
    for pc, insn in enumerate(prog.insns):
        if insn.opcode == CALL_OPCODE and insn.src == BPF_PSEUDO_CALL:
            starts.add(pc + insn.imm + 1)
    return sorted(starts)


def minimal_btf(nfuncs: int) -> bytes:
    """BTF with an ``int``, a FUNC_PROTO returning it with no parameters, and ``nfuncs`` static FUNCs.

    Type ids: 1 int, 2 proto, 3.. the functions (func_info type_id = 3 + i).
    Enough for 6.1's verifier to allow tail calls inside subprograms
    (include/uapi/linux/btf.h for the encoding).
    """
    strings = bytearray(b"\0int\0")
    types = bytearray()
    # BTF_KIND_INT (1): name "int", size 4; encoding: signed, 32 bits
    types += struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
    # BTF_KIND_FUNC_PROTO (13): no params, returns type 1
    types += struct.pack("<III", 0, 13 << 24, 1)
    for i in range(nfuncs):
        name_off = len(strings)
        strings += f"f{i}".encode() + b"\0"
        # BTF_KIND_FUNC (12), vlen = linkage BTF_FUNC_STATIC (0), type = the proto
        types += struct.pack("<III", name_off, 12 << 24, 2)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + bytes(types) + bytes(strings)


def _blob(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def encode_program(prog: Program, map_index: dict[str, int]) -> bytes:
    """A program with its map relocations (lddw slots naming a map) and, with subprograms, BTF."""
    insns = encode(prog.insns, map_fd=lambda _name: 0)
    relocs = [(pc, map_index[insn.map]) for pc, insn in enumerate(prog.insns) if insn.map is not None]
    starts = func_starts(prog)
    btf = minimal_btf(len(starts)) if len(starts) > 1 else b""
    funcs = starts if btf else []
    out = bytearray(_U32.pack(len(prog.insns)) + insns + _U32.pack(len(relocs)))
    for pc, m in relocs:
        out += struct.pack("<II", pc, m)
    out += _blob(btf) + _U32.pack(len(funcs)) + b"".join(_U32.pack(f) for f in funcs)
    return bytes(out)


@dataclass
class Request:
    """A scenario request being built; ``plan`` says what each wire event stands for."""

    flags: int
    maps: list[tuple[int, int, int, int]] = field(default_factory=list)
    programs: list[bytes] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    plan: list[tuple[str, object]] = field(default_factory=list)

    def load(self, prog: int, tag: object) -> None:
        self.events.append(bytes([EV_LOAD]) + _U32.pack(prog))
        self.plan.append(("load", tag))

    def update(self, m: int, key: bytes, value: bytes | int, flags: int, tag: object) -> None:
        body = bytes([EV_UPDATE]) + struct.pack("<II", m, flags) + _blob(key)
        body += bytes([1]) + _U32.pack(value) if isinstance(value, int) else bytes([0]) + _blob(value)
        self.events.append(body)
        self.plan.append(("update", tag))

    def delete(self, m: int, key: bytes, tag: object) -> None:
        self.events.append(bytes([EV_DELETE]) + _U32.pack(m) + _blob(key))
        self.plan.append(("delete", tag))

    def run(self, prog: int, packet: bytes, tag: object) -> None:
        self.events.append(bytes([EV_RUN]) + _U32.pack(prog) + _blob(packet))
        self.plan.append(("run", tag))

    def info(self, prog: int, tag: object) -> None:
        self.events.append(bytes([EV_INFO]) + _U32.pack(prog))
        self.plan.append(("info", tag))

    def fixed(self, retval: int, kind: str, tag: object) -> None:
        self.events.append(bytes([EV_FIXED]) + _I32.pack(retval))
        self.plan.append((kind, tag))

    def encode(self) -> bytes:
        out = bytearray([CMD_SCENARIO, self.flags])
        out += _U32.pack(len(self.maps))
        for m in self.maps:
            out += struct.pack("<IIII", *m)
        out += _U32.pack(len(self.programs)) + b"".join(self.programs)
        out += _U32.pack(len(self.events)) + b"".join(self.events)
        return bytes(out)


@dataclass(frozen=True)
class Images:
    xlated: bytes
    jited: bytes
    ksyms: tuple[int, ...]
    func_lens: tuple[int, ...]


@dataclass(frozen=True)
class LoadReply:
    retval: int
    log: str | None = None
    images: Images | None = None


@dataclass(frozen=True)
class RunReply:
    error: int                     # 0 or -errno of BPF_PROG_TEST_RUN
    r0: int                        # u32 retval
    packet: bytes
    maps: tuple[tuple[tuple[bytes, bytes | int], ...], ...]   # per map: (key, value or program index)


@dataclass(frozen=True)
class ScenarioReply:
    status: int
    map_errno: int = 0
    failed_map: int = -1
    outcomes: list[tuple[str, object, LoadReply | RunReply | Images | int]] = field(default_factory=list)
    malformed: bool = False


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"reply truncated at byte {self.pos} (wanted {n} of {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def i32(self) -> int:
        return _I32.unpack(self.take(4))[0]

    def blob(self) -> bytes:
        return self.take(self.u32())

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def read_images(r: Reader) -> Images:
    xlated = r.blob()
    jited = r.blob()
    ksyms = struct.unpack(f"<{(n := r.u32())}Q", r.take(8 * n))
    lens = struct.unpack(f"<{(m := r.u32())}I", r.take(4 * m))
    return Images(xlated, jited, tuple(ksyms), tuple(lens))


def decode_scenario_reply(data: bytes, request: Request, maps: list[tuple[int, int, int, int]]) -> ScenarioReply:
    r = Reader(data)
    if r.u8() != CMD_SCENARIO:
        raise ProtocolError("reply to a scenario is not a scenario reply")
    status = r.u8()
    if status == 2:
        err = r.i32()
        failed = r.u32() if not r.done else -1
        return ScenarioReply(status, err, failed)
    if status != 0:
        raise ProtocolError(f"unknown scenario status {status}")
    reply = ScenarioReply(status)
    for kind, tag in request.plan:
        if r.done:
            break
        ev = r.u8()
        if ev == 0xFF:
            reply.malformed = True
            break
        body: LoadReply | RunReply | Images | int
        if ev == EV_LOAD:
            retval = r.i32()
            if retval:
                body = LoadReply(retval, r.blob().decode(errors="replace"))
            else:
                body = LoadReply(0, None, read_images(r) if request.flags & FLAG_IMAGES_ON_LOAD else None)
        elif ev in (EV_UPDATE, EV_DELETE, EV_FIXED):
            body = r.i32()
        elif ev == EV_RUN:
            error, r0 = r.i32(), r.u32()
            packet = r.blob()
            contents = []
            for map_type, key_size, value_size, _max in maps:
                entries = []
                for _ in range(r.u32()):
                    key = r.take(key_size)
                    value: bytes | int = r.u32() if map_type == MAP_TYPES["prog_array"] else r.take(value_size)
                    entries.append((key, value))
                contents.append(tuple(entries))
            body = RunReply(error, r0, packet, tuple(contents))
        elif ev == EV_INFO:
            body = read_images(r)
        else:
            raise ProtocolError(f"unknown event kind {ev} in reply")
        reply.outcomes.append((kind, tag, body))
    if not r.done and r.u8() == 0xFF:
        reply.malformed = True
    return reply


def verifier_message(log: str | None) -> str:
    """The verifier's reason: the last line of its log that is not a statistic."""
    if not log:
        return "refused (no verifier log)"
    for line in reversed(log.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("processed ", "verification time", "stack depth", "max_states")):
            return line
    return "refused (no verifier log)"
