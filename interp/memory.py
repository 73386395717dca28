"""The interpreter's memory: a few bounds-checked regions in a 64-bit address space.

Address layout (every pointer a program sees is one of these; anything else
is unmapped and faults):

=======================  =====================================================
address                  what
=======================  =====================================================
``0x1_0000_0000``        R1 at entry: in an xdp scenario the read-only
                         ``struct xdp_md`` (not a byte buffer: its loads are
                         answered field by field, see :meth:`Memory.load`); in
                         a raw scenario the Run event's ``mem`` itself
``0x3_0000_0000 + i``    xdp: the packet (the Run event's ``mem``), what
                         ``data``..``data_end`` point at
``0x2_0000_0000 + i``    the stack: RUNTIME_FRAMES frames x 512 bytes; frame
                         k's R10 is 512*k below frame 0's (the region's top)
``(0x10 + n) << 32``     values of the n-th array/hash map of the scenario
``0xffff_8880_...``      map pointers (``lddw map:NAME``): not dereferenceable
=======================  =====================================================

A region is addressed by the upper 32 bits of an address; its buffer holds
the lower 32 bits' worth of bytes.  The valid window of the stack shrinks and
grows with the call depth: the current frame and its callers' frames are
accessible (pointers to a caller's stack are legal), the dead frames below
are not.
"""

from __future__ import annotations

from bpfdiff import xdp
from bpfdiff.engine import FAULT_MEMORY
from bpfdiff.helpers import HelperFault, Prandom
from bpfdiff.isa import MAX_BPF_STACK, MAX_CALL_FRAMES
from bpfdiff.maps import BpfMap

CTX_REGION = 1
STACK_REGION = 2
PACKET_REGION = 3
FIRST_MAP_REGION = 0x10
CTX_BASE = CTX_REGION << 32
STACK_BASE = STACK_REGION << 32
PACKET_BASE = PACKET_REGION << 32
# How deep a verified program can nest at run time.  The verifier bounds each
# program's own call chain by MAX_CALL_FRAMES, but a tail call from a
# subprogram enters a new program *inside* that frame, whose calls nest further:
# with at most 1 + 33 programs per run, 1 + 34 * (MAX_CALL_FRAMES - 1) frames.
# Deeper only when tail calls never stop: a stack overflow.
RUNTIME_FRAMES = 1 + 34 * (MAX_CALL_FRAMES - 1)
STACK_SIZE = RUNTIME_FRAMES * MAX_BPF_STACK
STACK_TOP = STACK_BASE + STACK_SIZE           # R10 of frame 0
MAP_POINTER_BASE = 0xFFFF_8880_0000_0000
MAP_POINTER_STRIDE = 0x1000
LOW32 = 0xFFFFFFFF


class MemoryFault(HelperFault):
    """An access outside every mapped window."""

    def __init__(self, reason: str) -> None:
        super().__init__(FAULT_MEMORY, reason)


def map_region_base(map_number: int) -> int:
    return (FIRST_MAP_REGION + map_number) << 32


def map_pointer(map_number: int) -> int:
    return MAP_POINTER_BASE + map_number * MAP_POINTER_STRIDE


def frame_pointer(depth: int) -> int:
    """R10 of the frame at call depth ``depth`` (0 = the main program)."""
    return STACK_TOP - depth * MAX_BPF_STACK


class Memory:
    """Regions as ``[buffer, lo, hi]`` lists keyed by ``addr >> 32``; lo/hi bound the valid window.

    Also the :class:`bpfdiff.maps.ValueStore` of the maps and the
    :class:`bpfdiff.helpers.HelperEnv` of the helpers.
    """

    __slots__ = ("regions", "stack", "maps_by_pointer", "prandom", "deepest", "xdp_md", "out_region")

    def __init__(self) -> None:
        self.regions: dict[int, list] = {}
        self.stack = [bytearray(STACK_SIZE), STACK_SIZE - MAX_BPF_STACK, STACK_SIZE]
        self.regions[STACK_REGION] = self.stack
        self.maps_by_pointer: dict[int, BpfMap] = {}
        self.prandom = Prandom(0)
        # a fresh stack is all zero: the first reset zeroes the main frame only (as after a run that
        # stayed in it) instead of all RUNTIME_FRAMES frames again
        self.deepest = 0
        # xdp: the struct xdp_md fields (offset -> value); None in a raw scenario
        self.xdp_md: dict[int, int] | None = None
        self.out_region = CTX_REGION         # the region a run returns as its ``mem``

    # -- setup ------------------------------------------------------------------
    def add_region(self, region: int, size: int) -> None:
        self.regions[region] = [bytearray(size), 0, size]

    def set_ctx(self, data: bytes) -> None:
        """A raw run: R1 points at ``data`` itself."""
        self.xdp_md = None
        self.regions.pop(PACKET_REGION, None)
        self.regions[CTX_REGION] = [bytearray(data), 0, len(data)]
        self.out_region = CTX_REGION

    def set_xdp(self, packet: bytes) -> None:
        """An xdp run: R1 points at a struct xdp_md whose data..data_end is ``packet``.

        The context is no byte buffer (its region is not mapped): the slow path
        of :meth:`load` answers each field, and every store to it faults.
        """
        self.regions.pop(CTX_REGION, None)
        self.regions[PACKET_REGION] = [bytearray(packet), 0, len(packet)]
        self.xdp_md = {xdp.XDP_MD_DATA: PACKET_BASE, xdp.XDP_MD_DATA_END: PACKET_BASE + len(packet),
                       xdp.XDP_MD_DATA_META: PACKET_BASE}
        for off in (xdp.XDP_MD_INGRESS_IFINDEX, xdp.XDP_MD_RX_QUEUE_INDEX):
            self.xdp_md[off] = xdp.xdp_md_scalar(off)
        self.out_region = PACKET_REGION

    def ctx_bytes(self) -> bytes:
        """The run's memory afterwards: the packet (xdp) or R1's bytes (raw)."""
        return bytes(self.regions[self.out_region][0])

    def _ctx_field(self, addr: int, size: int) -> int:
        """A load from the xdp_md context: 4-byte reads of the fields a test run fills in."""
        assert self.xdp_md is not None
        off = addr - CTX_BASE
        value = self.xdp_md.get(off) if size == xdp.XDP_MD_FIELD_SIZE else None
        if value is None:
            # misaligned, not 4 bytes, outside the struct, or egress_ifindex
            # (its xdp_txq_info is NULL in a test run): the verifier refuses all
            raise MemoryFault(f"read of {size} bytes at 0x{addr:x}: invalid bpf_context access "
                              f"off={off} size={size}")
        return value

    def reset_stack(self) -> None:
        # only the frames the last run reached can hold anything
        used = (self.deepest + 1) * MAX_BPF_STACK
        self.stack[0][STACK_SIZE - used:] = bytes(used)
        self.deepest = 0
        self.set_stack_depth(0)

    def set_stack_depth(self, depth: int) -> None:
        """Make frames 0..depth accessible (depth 0 = only the main frame)."""
        self.stack[1] = STACK_SIZE - (depth + 1) * MAX_BPF_STACK
        if depth > self.deepest:
            self.deepest = depth

    # -- program accesses (hot path) ----------------------------------------------
    def load(self, addr: int, size: int) -> int:
        region = self.regions.get(addr >> 32)
        if region is not None:
            off = addr & LOW32
            if region[1] <= off and off + size <= region[2]:
                return int.from_bytes(region[0][off:off + size], "little")
        if self.xdp_md is not None and addr >> 32 == CTX_REGION:
            return self._ctx_field(addr, size)
        raise MemoryFault(f"read of {size} bytes at 0x{addr:x}: {self.describe(addr)}")

    def store(self, addr: int, size: int, value: int) -> None:
        region = self.regions.get(addr >> 32)
        if region is not None:
            off = addr & LOW32
            if region[1] <= off and off + size <= region[2]:
                region[0][off:off + size] = value.to_bytes(size, "little")
                return
        raise MemoryFault(f"write of {size} bytes at 0x{addr:x}: {self.describe(addr)}")

    def describe(self, addr: int) -> str:
        """Why ``addr`` is not accessible, for fault reasons."""
        region_names = {CTX_REGION: "mem", STACK_REGION: "stack", PACKET_REGION: "packet"}
        number = addr >> 32
        region = self.regions.get(number)
        if region is None:
            if number == CTX_REGION and self.xdp_md is not None:
                return "the xdp_md context is read only"
            return "unmapped"
        name = region_names.get(number, "map values")
        return f"outside {name} window [+{region[1]:#x}, +{region[2]:#x})"

    # -- ValueStore / HelperEnv -----------------------------------------------------
    def read(self, addr: int, n: int) -> bytes:
        region = self.regions.get(addr >> 32)
        if region is not None:
            off = addr & LOW32
            if region[1] <= off and off + n <= region[2]:
                return bytes(region[0][off:off + n])
        raise MemoryFault(f"read of {n} bytes at 0x{addr:x}: {self.describe(addr)}")

    def write(self, addr: int, data: bytes) -> None:
        region = self.regions.get(addr >> 32)
        if region is not None:
            off = addr & LOW32
            if region[1] <= off and off + len(data) <= region[2]:
                region[0][off:off + len(data)] = data
                return
        raise MemoryFault(f"write of {len(data)} bytes at 0x{addr:x}: {self.describe(addr)}")

    def map_at(self, addr: int) -> BpfMap | None:
        return self.maps_by_pointer.get(addr)
