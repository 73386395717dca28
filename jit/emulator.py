"""One long-lived unicorn x86-64 machine that runs JIT images like the kernel does.

The machine is created once per :class:`~bpfdiff.jit.engine.JitEngine` and
reused for every scenario: regions are mapped once (grown when a scenario
needs more; map value blocks are mapped per scenario), per-scenario state is
reset by rewinding allocators, zeroing the data that was used and dropping
unicorn's translation cache.

Memory layout.  unicorn's x86-64 cannot fetch from the kernel's upper
canonical half, so the kernel's address *properties* are kept instead of its
addresses: text (helpers, thunks, images) sits in the low 2 GiB, so that a
``call``/``jmp rel32`` reaches it from anywhere in the text and also from the
image-less convergence passes (ip near 0), just as kernel text in the top
2 GiB is reachable from ip near 0 by sign extension; data (maps, programs,
stack, context) sits above 4 GiB, so the JIT picks ``movabs`` for a map
pointer exactly as for a kernel address:

==========================  ==============================================
``HELPER_BASE``             helper page: one ``ret`` every 8 bytes; helper
                            *id* lives at ``HELPER_BASE + 8 * id``
``THUNK_BASE``              ``__x86_indirect_thunk_<reg>`` (retpoline
                            thunks), 32 bytes per register
``SENTINEL``                the return address pushed before a run; its own
                            page, filled with ``int3``
``IMAGE_BASE``              JIT images, bump-allocated per scenario
``DATA_BASE``               kernel objects: ``struct bpf_array`` (prog
                            arrays and array maps), ``struct bpf_prog``,
                            hash map headers
``VALUES_BASE``             array and hash map values: each map's block
                            ends at a page end before an unmapped guard
                            page, the slack below it is watched
``STACK_BASE``              the kernel stack of the run (zeroed each run)
``MEM_END``                 the packet (xdp) or raw context: ``mem`` ends
                            exactly at ``MEM_END`` so reading past it faults,
                            and the slack below it (for a packet, the
                            test run's headroom and below) is watched by a
                            memory hook, so underruns fault too
``XDP_CTX_BASE``            xdp: the ``struct xdp_buff`` R1 points at, the
                            ``xdp_rxq_info`` and ``net_device`` behind it
                            (filled in by the engine at the profile's offsets)
``PERCPU_BASE``             CPU 0's per-CPU area (read-only), GS's base, when
                            the profile inlines ``bpf_get_smp_processor_id``
                            (``add %gs:this_cpu_off``, then the CPU number)
==========================  ==============================================

Helpers: the image calls ``HELPER_BASE + 8 * id``; a code hook on the helper
page runs the Python helper (``bpfdiff.helpers``) with rdi, rsi, rdx, rcx, r8
(R1-R5), puts the result in rax, poisons R1-R5 as the helpers module says, and
lets the ``ret`` return into the image.

Program trace: tail calls are recorded where they happen, at the tail-call
*jump*, never inferred from where code lands -- the tail-call entry
(``bpf_func + x86_tail_call_offset``) can also be the code of BPF pc 0, which a
loop jumping back to its first instruction reaches with no tail call at all
(always on 5.5, whose pc 0 starts at PROLOGUE_SIZE; on 6.1 when the prologue
has nothing after ``mov rbp,rsp``).  The first program of a run is entered
where ``emu_start`` begins, at its ``bpf_func`` (recorded before the start:
nothing else can enter a program there that the trace would record, so no
hook watches it).  One-address code hooks:

* per direct tail-call site (the 5-byte poke site): when it runs holding a
  ``jmp rel32``, the program whose image holds the destination is entered by
  a tail call (as a ``nop5`` it does nothing: the slot was empty);
* per indirect tail call, the instruction that performs the jump (6.1: ``jmp
  __x86_indirect_thunk_rcx`` or ``jmp *%rcx``; 5.5: the inline retpoline's
  ``call`` or ``jmp *%rax``): the target address is in the register the
  sequence uses (``JitImage.indirect_tail_calls``), the program whose image
  holds it is entered;
* per program, the end of the prologue (BPF pc 0), for the counter check.

A tail-call jump whose destination is not exactly the entered program's
tail-call entry is a violation (the ``tail-call-offset`` kind of bug; for a
direct site the poke check sees the bytes too, for an indirect jump, whose
target is computed at run time, this is the only place that can).  A jump
out of every image records nothing: fetching there faults.

After a program was entered (normally or by a tail call), at the end of its
prologue the frame's tail-call counter (``rbp + tail_call_cnt_off``) must be
at least the number of tail calls taken so far (it also counts attempts
through empty slots); less is a violation.  A loop back to pc 0 enters
nothing and checks nothing.  The counter is checked there, not at the jump,
because in flight it may live in a register (6.1 passes it in rax and an
indirect jump's retpoline thunk overwrites the slot with its return address).

Permissions are the kernel's: text is read-only and executable (pokes are
host-side writes, which unicorn lets through, like ``text_poke``), data is
never executable.  Not modelled: the interpreter's per-frame stack windows
(the JIT's stack is one region; only verifier-invalid programs can tell) and
an exact BPF instruction budget (the x86 count allows
``X86_INSNS_PER_BPF_INSN`` per BPF instruction, so a run between the two
limits would time out in the interpreter only).

Text patching: unicorn 2.1 keeps translated blocks across ``mem_write``; a
patched poke site would keep running its old code.  :meth:`Emulator.write_text`
therefore drops the translation cache of the range it wrote.
"""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bpfdiff.jit.poke import X86_PATCH_SIZE
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86

from bpfdiff.engine import EXIT, FAULT, FAULT_INVALID, FAULT_MEMORY, FAULT_STACK_OVERFLOW, TIMEOUT, EngineError
from bpfdiff.helpers import CLOBBER_VALUES, HelperFault

PAGE = 0x1000

HELPER_BASE = 0x4100_0000
HELPER_SLOT = 8
HELPER_PAGES = 1
MAX_HELPER_ID = HELPER_PAGES * PAGE // HELPER_SLOT - 1
SENTINEL = HELPER_BASE + 0x10_0000
# kernel text the JIT jumps to besides helpers: __x86_indirect_thunk_<reg>, one slot per register
THUNK_BASE = HELPER_BASE + 0x2000
THUNK_SLOT = 32
SENTINEL_BYTES = SENTINEL.to_bytes(8, "little")

IMAGE_BASE = 0x6000_0000
DATA_BASE = 0x7888_8000_0000
REGION_CHUNK = 1 << 20          # images and data are mapped in 1 MiB steps as they grow
IMAGE_ALIGN = 16
DATA_ALIGN = 64                 # like a kmalloc'ed object: cache-line aligned

STACK_BASE = 0x7C90_0000_0000
STACK_SIZE = 0x10000            # deeper than verified programs nest, even 34 programs deep via tail calls
STACK_TOP = STACK_BASE + STACK_SIZE
# A memory fault with rsp this close to the stack's bottom is the stack running
# out: a push or call faults before it moves rsp, so rsp is still at most 8 above.
STACK_OVERFLOW_MARGIN = 8
INITIAL_RBP = STACK_TOP - 0x10  # a made-up caller frame; `leave` in the epilogue restores it
INITIAL_RSP = STACK_TOP - 0x40  # holds SENTINEL, the return address of the run

MEM_END = 0x7888_0010_0000
XDP_CTX_BASE = MEM_END + 0x10_0000      # one page: xdp_buff, its rxq info and net_device

# Map values: each map's block in pages of its own, ending at a page end, an
# unmapped guard page after it, and the slack below it in its first page
# watched like the context's: an access outside a map's values faults, as in
# the interpreter (whose maps are separate regions).
VALUES_BASE = 0x7999_0000_0000
PERCPU_BASE = 0x7A00_0000_0000
MAX_MEM = 0x8_0000              # 512 KiB of context/packet
VALUE_BUFFERS_KEPT = 8          # host buffers of unmapped value blocks kept per size, for reuse

# x86 instructions allowed per BPF instruction of the budget: the JIT's worst
# cases (div with its pushes and pops, atomics' cmpxchg loops, the tail-call
# sequence) stay well below this, so a timeout here is a timeout there.
X86_INSNS_PER_BPF_INSN = 20

# Helper arguments R1..R5 and where the SysV ABI (the JIT's mapping) keeps them.
HELPER_ARG_REGS = (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX,
                   x86.UC_X86_REG_RCX, x86.UC_X86_REG_R8)

# the values written to HELPER_ARG_REGS after every helper call: R1..R5's poison
HELPER_POISON = tuple(CLOBBER_VALUES[bpf_reg] & 0xFFFF_FFFF_FFFF_FFFF for bpf_reg in range(1, 6))

GPRS = (x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX,
        x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI, x86.UC_X86_REG_R8, x86.UC_X86_REG_R9,
        x86.UC_X86_REG_R10, x86.UC_X86_REG_R11, x86.UC_X86_REG_R12, x86.UC_X86_REG_R13,
        x86.UC_X86_REG_R14, x86.UC_X86_REG_R15)

# x86 register number (ModRM encoding, 0-7) -> unicorn register: where an indirect tail call's target is
X86_REG_BY_NUMBER = (x86.UC_X86_REG_RAX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RBX,
                     x86.UC_X86_REG_RSP, x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI)
JMP_REL32 = 0xE9

# unicorn error -> the engines' fault kind.  Data accesses are memory faults;
# anything that breaks instruction fetch or decoding means the machine ran
# something that is not the program's code.
UC_ERROR_FAULT_KINDS: dict[int, str] = {
    ucc.UC_ERR_READ_UNMAPPED: FAULT_MEMORY,
    ucc.UC_ERR_WRITE_UNMAPPED: FAULT_MEMORY,
    ucc.UC_ERR_READ_PROT: FAULT_MEMORY,
    ucc.UC_ERR_WRITE_PROT: FAULT_MEMORY,
    ucc.UC_ERR_READ_UNALIGNED: FAULT_MEMORY,
    ucc.UC_ERR_WRITE_UNALIGNED: FAULT_MEMORY,
    ucc.UC_ERR_FETCH_UNMAPPED: FAULT_INVALID,
    ucc.UC_ERR_FETCH_PROT: FAULT_INVALID,
    ucc.UC_ERR_FETCH_UNALIGNED: FAULT_INVALID,
    ucc.UC_ERR_INSN_INVALID: FAULT_INVALID,
    ucc.UC_ERR_EXCEPTION: FAULT_INVALID,     # #DE, int3 (SLS padding, freed text), #UD
}

HelperHandler = Callable[[int, int, int, int, int, int], int]
_UNSEEN = object()


class _Registers:
    """64-bit register access straight through libunicorn.

    ``Uc.reg_read``/``reg_write`` of the Python binding cost about 4 us each
    (x86 special-register dispatch); the hooks touch a dozen registers per
    program entry and helper call, so they go through ``uc_reg_read`` /
    ``uc_reg_write`` with one reused buffer instead, and a helper call reads
    its arguments and writes its results with one ``uc_reg_read_batch`` /
    ``uc_reg_write_batch`` each (:meth:`batch`).  The functions are called
    without ctypes argument conversion (every argument is already a ctypes
    object or a small int), which halves the cost of a call.  These are the
    binding's internals (pinned: unicorn >=2.1,<2.2); without them the public
    methods are used.
    """

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        self._lib = None
        try:
            from unicorn.unicorn_py3.unicorn import uclib

            # our own function objects (no argtypes), not the binding's
            lib = ctypes.CDLL(uclib._name)
            self._handle = ctypes.c_void_p(uc._uch.value)
            self._read = lib.uc_reg_read
            self._write = lib.uc_reg_write
            self._lib = lib
        except (ImportError, AttributeError, OSError):  # pragma: no cover - other binding layouts
            self.read = uc.reg_read            # type: ignore[method-assign]
            self.write = uc.reg_write          # type: ignore[method-assign]

    def read(self, reg: int) -> int:
        self._read(self._handle, reg, self._ref)
        return self._value.value

    def write(self, reg: int, value: int) -> None:
        self._value.value = value & 0xFFFF_FFFF_FFFF_FFFF
        self._write(self._handle, reg, self._ref)

    def batch(self, regs: tuple[int, ...]) -> _RegisterBatch:
        """Reads and writes of ``regs`` together, one call each."""
        return _RegisterBatch(self, regs)


class _RegisterBatch:
    """A fixed list of registers read or written together (``uc_reg_read_batch`` / ``uc_reg_write_batch``)."""

    def __init__(self, regs: _Registers, ids: tuple[int, ...]) -> None:
        self.ids = ids
        self._regs = regs
        lib = regs._lib
        if lib is None:  # pragma: no cover - other binding layouts
            return
        n = len(ids)
        self._n = n
        self._handle = regs._handle
        self._ids = (ctypes.c_int * n)(*ids)
        self._values = (ctypes.c_uint64 * n)()
        self._pointers = (ctypes.c_void_p * n)(*[ctypes.addressof(self._values) + 8 * k for k in range(n)])
        self._read_batch = lib.uc_reg_read_batch
        self._write_batch = lib.uc_reg_write_batch

    def read(self) -> list[int]:
        if self._regs._lib is None:  # pragma: no cover - other binding layouts
            return [self._regs.read(reg) for reg in self.ids]
        self._read_batch(self._handle, self._ids, self._pointers, self._n)
        return self._values[:]

    def write(self, values: Iterable[int]) -> None:
        """``values`` in the order of the registers, as unsigned 64-bit numbers."""
        if self._regs._lib is None:  # pragma: no cover - other binding layouts
            for reg, value in zip(self.ids, values, strict=True):
                self._regs.write(reg, value)
            return
        self._values[:] = values
        self._write_batch(self._handle, self._ids, self._pointers, self._n)


READ_BUFFER = 4096              # bytes of the reused buffer small reads go through
# False: hooks, reads, cache drops and text writes through the binding's public API, text in
# unicorn's own memory (what the tests compare with)
NATIVE_CALLS = True


class _Native:
    """Memory reads, hooks and translation-cache drops straight through libunicorn.

    The binding's ``hook_add`` builds a new decorated ctypes callback per hook
    (about 0.1 ms; a scenario adds a dozen hooks) and calls every hook through
    two Python wrappers; ``mem_read`` allocates a buffer per read (the hooks
    read a few bytes at every tail call).  Here each kind of hook has one
    ctypes callback for the machine's lifetime, a hook's data is found by the
    key unicorn hands back, and small reads reuse one buffer.  Like
    :class:`_Registers`, these are the binding's internals (pinned: unicorn
    >=2.1,<2.2); without them the public methods are used.

    A hook that raises stops the emulation and keeps the exception
    (:attr:`error`), as the binding does: the run reports it.
    """

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.error: BaseException | None = None
        self._data: dict[int, object] = {}          # hook key -> its user data
        self._keys: dict[int, int] = {}             # hook handle -> its key
        self._next_key = 1                          # 0 would come back as None
        self._callbacks: dict[object, object] = {}  # (kind, method) -> its ctypes callback, kept alive
        self._lib = None
        if not NATIVE_CALLS:
            return
        try:
            from unicorn.unicorn_py3 import unicorn as binding

            self._lib = binding.uclib
            self._handle = uc._uch
            self._hook_h = binding.uc_hook_h
            # uc_hook_add / uc_hook_del as our own function objects, called without ctypes argument
            # conversion (every argument made a ctypes object here): a scenario adds and deletes a
            # dozen hooks, and the conversion was half the cost of each call
            own = ctypes.CDLL(binding.uclib._name)
            self._hook_add = own.uc_hook_add
            self._hook_del = own.uc_hook_del
            self._code_cfunc = binding.HOOK_CODE_CFUNC
            self._mem_cfunc = binding.HOOK_MEM_ACCESS_CFUNC
            self._buffer = ctypes.create_string_buffer(READ_BUFFER)
            # uc_ctl's code for UC_CTL_TB_REMOVE_CACHE with two arguments, written (uc.h UC_CTL_WRITE)
            self._remove_cache_code = (ucc.UC_CTL_IO_WRITE << 30) | (2 << 26) | ucc.UC_CTL_TB_REMOVE_CACHE
        except (ImportError, AttributeError):  # pragma: no cover - other binding layouts
            self._lib = None

    # -- memory -------------------------------------------------------------------------
    def read(self, addr: int, n: int) -> bytes:
        lib = self._lib
        if lib is None or n > READ_BUFFER:
            return bytes(self.uc.mem_read(addr, n))
        status = lib.uc_mem_read(self._handle, addr, self._buffer, n)
        if status != ucc.UC_ERR_OK:
            raise UcError(status, addr, n)
        return ctypes.string_at(self._buffer, n)

    def remove_cache(self, begin: int, end: int) -> None:
        """Drop the translated blocks of [begin, end)."""
        if self._lib is None:
            self.uc.ctl_remove_cache(begin, end)
            return
        status = self._lib.uc_ctl(self._handle, self._remove_cache_code, ctypes.c_uint64(begin),
                                  ctypes.c_uint64(end))
        if status != ucc.UC_ERR_OK:
            raise UcError(status)

    # -- hooks --------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.uc.emu_stop()

    def _callback(self, kind: str, method: Callable) -> object:
        key = (kind, method)
        callback = self._callbacks.get(key)
        if callback is None:
            uc, data, failed = self.uc, self._data, self._failed
            if kind == "code":
                def guarded_code(handle: int, address: int, size: int, hook_key: int) -> None:
                    try:
                        method(uc, address, size, data[hook_key])
                    except BaseException as exc:  # noqa: BLE001 - kept for the run to report
                        failed(exc)

                callback = self._code_cfunc(guarded_code)
            else:
                def guarded_mem(handle: int, access: int, address: int, size: int, value: int,
                                hook_key: int) -> None:
                    try:
                        method(uc, access, address, size, value, data[hook_key])
                    except BaseException as exc:  # noqa: BLE001 - kept for the run to report
                        failed(exc)

                callback = self._mem_cfunc(guarded_mem)
            self._callbacks[key] = callback
        return callback

    def hook_add(self, htype: int, method: Callable, user_data: object, begin: int, end: int) -> int:
        """``method(uc, address, size, user_data)`` for a code hook, ``method(uc, access, address, size,
        value, user_data)`` for a memory hook, on [begin, end] (inclusive, as unicorn's)."""
        if self._lib is None:
            if htype == UC_HOOK_CODE:
                return self.uc.hook_add(htype, lambda uc, address, size, _: method(uc, address, size, user_data),
                                        begin=begin, end=end)
            return self.uc.hook_add(htype, lambda uc, access, address, size, value, _:
                                    method(uc, access, address, size, value, user_data), begin=begin, end=end)
        callback = self._callback("code" if htype == UC_HOOK_CODE else "mem", method)
        key = self._next_key
        self._next_key += 1
        self._data[key] = user_data
        handle = self._hook_h()
        status = self._hook_add(self._handle, ctypes.byref(handle), ctypes.c_int(htype), callback,
                                ctypes.c_void_p(key), ctypes.c_uint64(begin), ctypes.c_uint64(end))
        if status != ucc.UC_ERR_OK:
            del self._data[key]
            raise UcError(status)
        self._keys[handle.value] = key
        return handle.value

    def hook_del(self, hook: int) -> None:
        if self._lib is None:
            self.uc.hook_del(hook)
            return
        status = self._hook_del(self._handle, self._hook_h(hook))
        if status != ucc.UC_ERR_OK:
            raise UcError(status)
        self._data.pop(self._keys.pop(hook), None)


def round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass(eq=False)
class EntryPoint:
    """A loaded program as the trace hooks see it."""

    name: str
    bpf_func: int
    tail_entry: int                  # bpf_func + the profile's tail-call offset
    body: int                        # end of the main image's prologue (its addrs[0]): BPF pc 0
    tail_call_cnt_off: int | None    # rbp-relative counter slot of the main image
    tail_call_cnt_ptr: bool = False  # the slot holds tail_call_cnt_ptr (6.10+), the count is behind it

    def points(self) -> list[int]:
        """The addresses the entry hooks watch: the end of the prologue (neither the normal entry, where
        a run starts, nor the tail-call entry: see the module doc)."""
        return [self.body]


@dataclass(frozen=True)
class TextRange:
    """Where one image lives, for mapping a faulting rip back to a BPF pc."""

    base: int
    end: int
    prog: str
    insn_at: Callable[[int], int | None]


@dataclass
class RawRun:
    """What one run did, before the engine adds maps and memory."""

    exit: str
    rax: int
    trace: list[str]
    tail_calls: int
    mem: bytes
    fault_kind: str | None = None
    fault_pc: int | None = None
    fault_prog: str | None = None
    fault_reason: str | None = None
    violations: list[str] = field(default_factory=list)


class _HostMemory:
    """Guest memory held in host buffers mapped into the machine (``mem_map_ptr``).

    The machine reads and writes these bytes as its own memory, with the
    permissions they were mapped with; the host reads and writes them as
    slices of a memoryview, without a call into unicorn (``mem_read`` /
    ``mem_write`` cost 1-4 us a call, and the hooks, the maps and the engine
    make dozens per run; on read-only text ``mem_write`` also makes the
    region writable and read-only again around the copy, 20-30 us).  Like
    ``mem_write``, a write here ignores permissions and keeps translations:
    whoever writes code drops its translations (:meth:`Emulator.write_text`).
    A fresh mapping is zeroed, as unicorn's own memory is.
    """

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self._starts: list[int] = []
        self._blocks: list[tuple[int, int, memoryview, ctypes.Array]] = []   # (start, end, view, buffer)
        # the machine's memory must live as long as the machine, whoever holds it
        uc.__dict__["bpfdiff_host_memory"] = self

    def map(self, start: int, size: int, perms: int, buffer: ctypes.Array | None = None) -> ctypes.Array:
        """Map [start, start + size) onto ``buffer`` (a new zeroed one by default), which it returns."""
        if buffer is None:
            buffer = (ctypes.c_ubyte * size)()
        self.uc.mem_map_ptr(start, size, perms, ctypes.addressof(buffer))
        index = bisect.bisect(self._starts, start)
        self._starts.insert(index, start)
        self._blocks.insert(index, (start, start + size, memoryview(buffer).cast("B"), buffer))
        return buffer

    def unmap(self, start: int) -> ctypes.Array:
        """Unmap the block mapped at ``start``; its buffer."""
        index = bisect.bisect_left(self._starts, start)
        _start, end, _view, buffer = self._blocks.pop(index)
        del self._starts[index]
        self.uc.mem_unmap(start, end - start)
        return buffer

    def view_at(self, addr: int, n: int) -> tuple[memoryview, int] | None:
        """(view, offset) of [addr, addr + n) when it lies in one block, else None.

        The view stays valid while the block is mapped: the hooks keep one for the bytes they
        read at every call (a poke site, the stack) instead of finding the block each time.
        """
        index = bisect.bisect(self._starts, addr) - 1
        if index >= 0:
            start, end, view, _buffer = self._blocks[index]
            if addr + n <= end:
                return view, addr - start
        return None

    def _spans(self, addr: int, n: int) -> list[tuple[memoryview, int, int]] | None:
        """(view, offset, length) pieces of [addr, addr + n) in consecutive blocks; None if not all host memory."""
        index = bisect.bisect(self._starts, addr) - 1
        pieces = []
        while n > 0:
            if index < 0 or index >= len(self._blocks):
                return None
            start, end, view, _buffer = self._blocks[index]
            if not start <= addr < end:
                return None
            length = min(n, end - addr)
            pieces.append((view, addr - start, length))
            addr += length
            n -= length
            index += 1
        return pieces

    def read(self, addr: int, n: int) -> bytes | None:
        """The bytes at [addr, addr + n), or None when they are not all host memory."""
        index = bisect.bisect(self._starts, addr) - 1
        if index >= 0:
            start, end, view, _buffer = self._blocks[index]
            if addr + n <= end:
                offset = addr - start
                return bytes(view[offset:offset + n])
        pieces = self._spans(addr, n)
        if pieces is None:
            return None
        return b"".join(bytes(view[offset:offset + length]) for view, offset, length in pieces)

    def write(self, addr: int, data: bytes) -> bool:
        """Copy ``data`` to ``addr``; False (nothing written) when the range is not all host memory."""
        n = len(data)
        index = bisect.bisect(self._starts, addr) - 1
        if index >= 0:
            start, end, view, _buffer = self._blocks[index]
            if start <= addr and addr + n <= end:
                offset = addr - start
                view[offset:offset + n] = data
                return True
        pieces = self._spans(addr, n)
        if pieces is None:
            return False
        done = 0
        for view, offset, length in pieces:
            view[offset:offset + length] = data[done:done + length]
            done += length
        return True

    def fill(self, addr: int, n: int, byte: int) -> bool:
        """Set [addr, addr + n) to ``byte``; False (nothing written) when it is not all host memory."""
        pieces = self._spans(addr, n)
        if pieces is None:
            return False
        for view, offset, length in pieces:
            ctypes.memset(ctypes.addressof(view.obj) + offset, byte, length)   # view.obj: its ctypes buffer
        return True


class _BumpRegion:
    """A growable region of unicorn memory with a bump allocator, rewound per scenario.

    ``host``: the region's memory is host buffers mapped into the machine
    (:class:`_HostMemory`), else unicorn's own memory.
    """

    def __init__(self, uc: Uc, base: int, align: int, perms: int, host: _HostMemory | None = None) -> None:
        self.uc = uc
        self.base = base
        self.align = align
        self.perms = perms
        self.top = base
        self.mapped_end = base
        self.host = host

    @property
    def host_backed(self) -> bool:
        return self.host is not None

    def alloc(self, size: int) -> int:
        addr = round_up(self.top, self.align)
        end = addr + max(size, 1)
        if end > self.mapped_end:
            grow = round_up(end - self.mapped_end, REGION_CHUNK)
            if self.host is not None:
                self.host.map(self.mapped_end, grow, self.perms)
            else:
                self.uc.mem_map(self.mapped_end, grow, self.perms)
            self.mapped_end += grow
        self.top = end
        return addr

    def contains(self, addr: int, n: int) -> bool:
        return self.base <= addr and addr + n <= self.top

    def rewind(self, fill: int) -> None:
        """Forget every allocation; overwrite what was used with ``fill`` bytes."""
        used = self.top - self.base
        if used and (self.host is None or not self.host.fill(self.base, used, fill)):
            self.uc.mem_write(self.base, bytes([fill]) * used)
        self.top = self.base


class Emulator:
    """The unicorn machine, its memory layout and the run loop."""

    def __init__(self, x86_tail_call_offset: int, percpu: tuple[int, int, int] | None = None) -> None:
        """``percpu``: (address of ``this_cpu_off``, address of the CPU number, the CPU number) --
        the per-CPU variables of the kernel an inlined ``bpf_get_smp_processor_id`` reads."""
        self.tail_call_offset = x86_tail_call_offset
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc = uc
        # Permissions as the kernel sets them: text read-only and executable
        # (pokes are host-side writes, which unicorn lets through, like
        # text_poke), data never executable.  A wild write or jump then
        # faults instead of corrupting the machine for later scenarios.
        text, data = UC_PROT_READ | UC_PROT_EXEC, UC_PROT_READ | UC_PROT_WRITE
        uc.mem_map(HELPER_BASE, HELPER_PAGES * PAGE, text)
        uc.mem_write(HELPER_BASE, b"\xc3" * (HELPER_PAGES * PAGE))   # ret
        uc.mem_map(THUNK_BASE, PAGE, text)
        uc.mem_write(THUNK_BASE, b"\xcc" * PAGE)
        uc.mem_map(SENTINEL, PAGE, text)
        uc.mem_write(SENTINEL, b"\xcc" * PAGE)
        # the data a run touches lives in host buffers (see _HostMemory), unless the reference is asked for
        self.host = _HostMemory(uc) if NATIVE_CALLS else None
        self._map(STACK_BASE, STACK_SIZE, data)
        self._map(XDP_CTX_BASE, PAGE, data)
        if percpu is not None:
            # this_cpu_off holds the CPU's per-CPU base (gs:this_cpu_off == GS base), so that
            # `add %gs:this_cpu_off,%rax` turns a per-CPU offset into the CPU's address
            this_cpu_off, cpu_number, cpu = percpu
            uc.mem_map(PERCPU_BASE, round_up(max(this_cpu_off, cpu_number) + 8, PAGE), UC_PROT_READ)
            uc.mem_write(PERCPU_BASE + this_cpu_off, PERCPU_BASE.to_bytes(8, "little"))
            uc.mem_write(PERCPU_BASE + cpu_number, cpu.to_bytes(4, "little"))
            uc.reg_write(x86.UC_X86_REG_GS_BASE, PERCPU_BASE)
        self._zero_stack = bytes(STACK_SIZE)
        # The stack's host buffer, read and written in place by the run loop and the hooks (None: the
        # stack is unicorn's own memory, see NATIVE_CALLS)
        self._stack = self.host.view_at(STACK_BASE, STACK_SIZE)[0] if self.host is not None else None
        self.images = _BumpRegion(uc, IMAGE_BASE, IMAGE_ALIGN, text, self.host)
        self.data = _BumpRegion(uc, DATA_BASE, DATA_ALIGN, data, self.host)
        self.regs = _Registers(uc)
        self._helper_args = self.regs.batch((*HELPER_ARG_REGS, x86.UC_X86_REG_RSP))
        self._helper_results = self.regs.batch((x86.UC_X86_REG_RAX, *HELPER_ARG_REGS))
        # a raw run's arguments (R1 = the context, R2 = its length), and what every run ends with
        self._run_args = self.regs.batch((x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI))
        self._run_end = self.regs.batch((x86.UC_X86_REG_RIP, x86.UC_X86_REG_RAX))
        self.native = _Native(uc)
        # The register state every run starts from (all zero, a made-up caller
        # frame); restoring a saved context is one call instead of twenty.
        for reg in GPRS:
            uc.reg_write(reg, 0)
        uc.reg_write(x86.UC_X86_REG_RFLAGS, 0x2)
        uc.reg_write(x86.UC_X86_REG_RBP, INITIAL_RBP)
        uc.reg_write(x86.UC_X86_REG_RSP, INITIAL_RSP)
        self._initial_context = uc.context_save()
        self._helper_hook = self.native.hook_add(UC_HOOK_CODE, self._on_helper, None, HELPER_BASE,
                                                 HELPER_BASE + HELPER_PAGES * PAGE - 1)

        self.helper_handler: HelperHandler | None = None
        self._value_blocks: list[tuple[int, int, int, int | None]] = []   # (map start, size, base, slack hook)
        self._values_top = VALUES_BASE
        # The previous scenario's value blocks, by start, still mapped: a block of the same shape at
        # the same place is reused (mapping and unmapping cost more than zeroing); the others are
        # unmapped before the first run (_release_spare_values).
        self._spare_values: dict[int, tuple[int, int, int, int | None]] = {}
        # host buffers of unmapped value blocks, by size, for the next blocks of that size
        self._value_buffers: dict[int, list[ctypes.Array]] = {}
        self._entry_hooks: list[int] = []
        self._entries: dict[str, EntryPoint] = {}     # loaded program name -> its entry point
        self._text: list[TextRange] = []
        self._text_bases: list[int] = []
        # No block of the image region is translated (see _untranslated): true until a run starts
        self._images_untranslated = True
        # tail-call destination -> the program entered there (None: no program), as text_at and the
        # entries say; forgotten whenever either changes
        self._entered: dict[int, EntryPoint | None] = {}

        # the context region of the current run (host memory: the end of _mem_buffer, grown as needed)
        self._mem_pages = 0
        self._mem_buffer: ctypes.Array | None = None
        self._mem_view: memoryview | None = None       # all of _mem_buffer; the region is its end
        self._mem_slack_hook: int | None = None
        self._mem_slack: tuple[int, int] | None = None
        self.mem_start = MEM_END
        self.mem_len = 0

        # per-run state the hooks fill in
        self._trace: list[str] = []
        self._in_prologue: EntryPoint | None = None  # entered (normally or by a tail call), body not yet reached
        self._frame_rbp: int | None = None
        self._subprog_tail_call = False
        self._violations: list[str] = []
        self._fault: tuple[str, int | None, str] | None = None   # kind, rip, reason

    # -- memory ------------------------------------------------------------------
    def _map(self, start: int, size: int, perms: int) -> None:
        """Map a region that stays: host memory when there is some, else unicorn's own."""
        if self.host is not None:
            self.host.map(start, size, perms)
        else:
            self.uc.mem_map(start, size, perms)

    def read(self, addr: int, n: int) -> bytes:
        if self.host is not None:
            data = self.host.read(addr, n)
            if data is not None:
                return data
        return self.native.read(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        """Write memory, as the host does: permissions do not apply, translations are kept."""
        data = bytes(data)
        if self.host is None or not self.host.write(addr, data):
            self.uc.mem_write(addr, data)

    def host_view(self, addr: int, n: int) -> tuple[memoryview, int] | None:
        """(view, offset) of [addr, addr + n) in host memory, to write it in place as :meth:`write`
        does (valid while its region stays mapped: the stack, the xdp context page); None when the
        bytes are not one block of host memory."""
        return self.host.view_at(addr, n) if self.host is not None else None

    def _read_int(self, addr: int, n: int) -> int:
        """The unsigned little-endian number in [addr, addr + n): from the stack's buffer when it is
        there (what the hooks read: a return address, a tail-call counter), else :meth:`read`
        (UcError when it is not mapped)."""
        stack = self._stack
        if stack is not None and STACK_BASE <= addr and addr + n <= STACK_TOP:
            return int.from_bytes(stack[addr - STACK_BASE:addr - STACK_BASE + n], "little")
        return int.from_bytes(self.read(addr, n), "little")

    def write_text(self, addr: int, data: bytes) -> None:
        """Write code, and drop every translated block that covers it (else the old code keeps running)."""
        self.write(addr, data)
        if not self._untranslated(addr):
            self.native.remove_cache(addr, addr + len(data))

    def _untranslated(self, addr: int) -> bool:
        """Whether no translated block can cover ``addr``: image text while no run started since
        :meth:`reset` dropped the translations of the whole image region (blocks are translated
        only by a run: whoever starts the machine without :meth:`run` must not rewrite its image
        text afterwards).  Loading a scenario writes and hooks its images then, without a cache
        drop for each write and hook (each costs microseconds in libunicorn)."""
        return self._images_untranslated and addr >= IMAGE_BASE

    def alloc_image(self, size: int) -> int:
        return self.images.alloc(size)

    def alloc_data(self, size: int) -> int:
        return self.data.alloc(size)

    def alloc_values(self, size: int, header: int = 0) -> int:
        """A zeroed block of map values that faults on any access outside it (see VALUES_BASE).

        ``header`` bytes right before the values are mapped too (struct bpf_array's header
        in front of its value[]): the engine writes them, the program's accesses fault.
        """
        pages = max(round_up(size + header, PAGE) // PAGE, 1)
        start = self._values_top
        self._values_top = start + (pages + 1) * PAGE           # + the guard page
        base = start + pages * PAGE - size
        spare = self._spare_values.pop(start, None)
        if spare is not None and spare[1] == pages * PAGE:
            # the previous scenario's block of the same size here: zeroed, it is a new one
            if self.host is None or not self.host.fill(start, pages * PAGE, 0):
                self.uc.mem_write(start, bytes(pages * PAGE))
            hook = spare[3]
            if spare[2] != base:         # the watched slack below the values is another
                if hook is not None:
                    self.native.hook_del(hook)
                hook = None
                if base > start:
                    hook = self.native.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_value_slack,
                                                (base, size), start, base - 1)
        else:
            if spare is not None:
                self._unmap_values(spare)
            for other in [b for b in self._spare_values.values() if b[0] < self._values_top and start < b[0] + b[1]]:
                self._unmap_values(self._spare_values.pop(other[0]))      # in the way of this block or its guard
            self._map_values(start, pages * PAGE)
            hook = None
            if base > start:
                hook = self.native.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_value_slack,
                                            (base, size), start, base - 1)
        self._value_blocks.append((start, pages * PAGE, base, hook))
        return base

    def _map_values(self, start: int, length: int) -> None:
        """Map a zeroed value block; in host memory, on a buffer of an unmapped block of that size if any."""
        if self.host is None:
            self.uc.mem_map(start, length, UC_PROT_READ | UC_PROT_WRITE)
            return
        spare = self._value_buffers.get(length)
        buffer = spare.pop() if spare else None
        if buffer is not None:
            ctypes.memset(ctypes.addressof(buffer), 0, length)
        self.host.map(start, length, UC_PROT_READ | UC_PROT_WRITE, buffer)

    def _unmap_values(self, block: tuple[int, int, int, int | None]) -> None:
        start, length, _base, hook = block
        if hook is not None:
            self.native.hook_del(hook)
        if self.host is None:
            self.uc.mem_unmap(start, length)
            return
        spare = self._value_buffers.setdefault(length, [])
        buffer = self.host.unmap(start)
        if len(spare) < VALUE_BUFFERS_KEPT:
            spare.append(buffer)

    def _release_spare_values(self) -> None:
        """Unmap the previous scenario's blocks this one did not reuse (a wild access there must fault)."""
        for block in self._spare_values.values():
            self._unmap_values(block)
        self._spare_values.clear()

    @staticmethod
    def helper_addr(helper_id: int) -> int:
        """Where the image calls helper ``helper_id``.

        Ids beyond the page (no such helper exists: the kernel has a few
        hundred) share its last slot, itself no helper, so calling one faults
        as unsupported at run time, like the interpreter's unknown helper.
        """
        if not 0 <= helper_id <= MAX_HELPER_ID:
            helper_id = MAX_HELPER_ID
        return HELPER_BASE + HELPER_SLOT * helper_id

    @staticmethod
    def thunk_addr(reg: int) -> int:
        """Where ``__x86_indirect_thunk_<reg>`` lives (x86 register number 0-15)."""
        return THUNK_BASE + THUNK_SLOT * reg

    def install_thunk(self, reg: int, code: bytes) -> None:
        if len(code) > THUNK_SLOT:
            raise EngineError(f"thunk for register {reg} is {len(code)} bytes, slot is {THUNK_SLOT}")
        self.write_text(self.thunk_addr(reg), code)

    def program_visible(self, addr: int, n: int) -> bool:
        """May a helper read or write these bytes?  Stack, context, map values."""
        if STACK_BASE <= addr and addr + n <= STACK_TOP or self.mem_start <= addr and addr + n <= MEM_END:
            return True
        return any(base <= addr and addr + n <= start + length
                   for start, length, base, _hook in self._value_blocks)

    # -- scenario lifetime --------------------------------------------------------
    def reset(self) -> None:
        """Forget every image, entry point and object of the previous scenario."""
        for hook in self._entry_hooks:
            self.native.hook_del(hook)
        self._entry_hooks.clear()
        self._entries.clear()
        self._text.clear()
        self._text_bases.clear()
        self._entered.clear()
        self._release_spare_values()
        self._spare_values = {block[0]: block for block in self._value_blocks}
        self._value_blocks.clear()
        self._values_top = VALUES_BASE
        self.images.rewind(0xCC)   # stale jumps into freed text trap instead of running old code
        self.data.rewind(0)
        # The translations in the image region are stale now (the images', and those of whatever a
        # wild jump translated in its free part); the rest of the text (helpers, thunks, sentinel)
        # never changes and keeps its translations.
        if not self._images_untranslated:
            self.native.remove_cache(IMAGE_BASE, self.images.mapped_end)
            self._images_untranslated = True

    def close(self) -> None:
        """Free the unicorn instance now (idempotent); the emulator is unusable afterwards.

        Deleting the hooks and dropping every reference lets the garbage
        collector release the instance (and its guest memory).
        """
        uc = self.__dict__.pop("uc", None)
        if uc is None:
            return
        value_hooks = [hook for _start, _length, _base, hook in [*self._value_blocks, *self._spare_values.values()]]
        for hook in [*self._entry_hooks, self._helper_hook, self._mem_slack_hook, *value_hooks]:
            if hook is not None:
                self.native.hook_del(hook)
        self._entry_hooks.clear()
        self._mem_slack_hook = None
        self.images.uc = self.data.uc = None  # type: ignore[assignment]
        if self.host is not None:
            self.host.uc = None  # type: ignore[assignment]   # the buffers stay with the machine
        self.regs = None  # type: ignore[assignment]
        self.native = None  # type: ignore[assignment]

    def install_image(self, base: int, code: bytes, prog: str, insn_at: Callable[[int], int | None]) -> None:
        """Copy a JIT image to its address and remember it for fault pc recovery."""
        self.write_text(base, code)
        index = bisect.bisect(self._text_bases, base)
        self._text_bases.insert(index, base)
        self._text.insert(index, TextRange(base, base + len(code), prog, insn_at))
        self._entered.clear()

    def add_entry_point(self, entry: EntryPoint) -> None:
        """Hook a program's normal entry and prologue end; tail calls into it are seen by :meth:`add_tail_calls`."""
        native = self.native
        self._entries[entry.name] = entry
        self._entered.clear()
        for address in entry.points():
            self._entry_hooks.append(native.hook_add(UC_HOOK_CODE, self._on_prologue_point, entry, address, address))
        # A block translated before the hooks existed would not call them.
        if not self._untranslated(entry.body):
            native.remove_cache(entry.body, entry.body + 1)

    def add_tail_calls(self, direct_sites: Iterable[int], indirect_jumps: Iterable[tuple[int, int]]) -> None:
        """Hook an image's tail-call jumps: its direct poke sites and its indirect jumps.

        ``indirect_jumps``: (address of the instruction that performs the
        jump, x86 register number 0-7 holding the target address there).
        """
        native, host = self.native, self.host
        for site in direct_sites:
            where = host.view_at(site, X86_PATCH_SIZE) if host is not None else None
            self._entry_hooks.append(native.hook_add(UC_HOOK_CODE, self._on_direct_site, where, site, site))
            if not self._untranslated(site):
                native.remove_cache(site, site + 1)
        for address, reg in indirect_jumps:
            self._entry_hooks.append(native.hook_add(UC_HOOK_CODE, self._on_indirect_jump, X86_REG_BY_NUMBER[reg],
                                                     address, address))
            if not self._untranslated(address):
                native.remove_cache(address, address + 1)

    def text_at(self, addr: int) -> TextRange | None:
        index = bisect.bisect(self._text_bases, addr) - 1
        if index >= 0 and addr < self._text[index].end:
            return self._text[index]
        return None

    # -- running ------------------------------------------------------------------
    def _set_mem(self, mem: bytes, headroom: int) -> None:
        n = len(mem)
        if n > MAX_MEM:
            raise EngineError(f"run context of {n} bytes exceeds {MAX_MEM}")
        pages = round_up(n + headroom, PAGE) // PAGE
        uc = self.uc
        if pages != self._mem_pages:
            if self._mem_pages:
                if self.host is not None:
                    self.host.unmap(MEM_END - self._mem_pages * PAGE)
                else:
                    uc.mem_unmap(MEM_END - self._mem_pages * PAGE, self._mem_pages * PAGE)
            if pages:
                self._map_mem(pages * PAGE)
            self._mem_pages = pages
        self.mem_start = MEM_END - n
        self.mem_len = n
        if n:
            view = self._mem_view
            if view is not None:
                view[len(view) - n:] = mem
            else:
                self.write(self.mem_start, mem)
        lowest = MEM_END - pages * PAGE
        slack = (lowest, self.mem_start) if lowest < self.mem_start else None
        if slack != self._mem_slack:
            if self._mem_slack_hook is not None:
                self.native.hook_del(self._mem_slack_hook)
                self._mem_slack_hook = None
            if slack is not None:
                self._mem_slack_hook = self.native.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_mem_slack,
                                                            None, slack[0], slack[1] - 1)
            self._mem_slack = slack

    def _map_mem(self, size: int) -> None:
        """Map [MEM_END - size, MEM_END), zeroed; in host memory, the end of one buffer reused by every run."""
        if self.host is None:
            self.uc.mem_map(MEM_END - size, size, UC_PROT_READ | UC_PROT_WRITE)
            return
        if self._mem_buffer is None or len(self._mem_buffer) < size:
            self._mem_buffer = (ctypes.c_ubyte * max(size, 4 * PAGE))()
            self._mem_view = memoryview(self._mem_buffer).cast("B")
        capacity = len(self._mem_buffer)
        tail = (ctypes.c_ubyte * size).from_buffer(self._mem_buffer, capacity - size)
        ctypes.memset(ctypes.addressof(tail), 0, size)
        self.host.map(MEM_END - size, size, UC_PROT_READ | UC_PROT_WRITE, tail)

    @staticmethod
    def packet_start(n: int) -> int:
        """Where a run's ``mem`` of ``n`` bytes starts (it ends at MEM_END)."""
        return MEM_END - n

    def run(self, entry: EntryPoint, mem: bytes, budget: int, context: int | None = None,
            headroom: int = 0) -> RawRun:
        """Call ``entry.bpf_func`` until it returns, faults or exhausts the budget.

        ``context`` None: a raw run, ``bpf_func(mem, len(mem))``.  Otherwise R1
        is ``context`` (an xdp_buff the caller wrote, pointing at
        :meth:`packet_start`) and ``headroom`` bytes are mapped before the
        packet, as the test run allocates them (watched: touching them faults).
        """
        uc = self.uc
        if self._spare_values:
            self._release_spare_values()
        self._set_mem(mem, headroom)
        stack = self._stack
        if stack is None:
            uc.mem_write(STACK_BASE, self._zero_stack)
        else:
            ctypes.memset(ctypes.addressof(stack.obj), 0, STACK_SIZE)     # stack.obj: its ctypes buffer
        uc.context_restore(self._initial_context)
        regs = self.regs
        if context is None:
            self._run_args.write((self.mem_start, len(mem)))
        else:
            # bpf_prog_run_xdp passes the xdp_buff; rsi (R2) is not the program's to read
            regs.write(x86.UC_X86_REG_RDI, context)
        if stack is None:
            self.write(INITIAL_RSP, SENTINEL_BYTES)
        else:
            stack[INITIAL_RSP - STACK_BASE:INITIAL_RSP - STACK_BASE + 8] = SENTINEL_BYTES

        # the run's program is entered at its first instruction (its prologue point, below, follows)
        self._trace = [entry.name]
        self._in_prologue = entry
        self._frame_rbp = None
        self._subprog_tail_call = False
        self._violations = []
        self._fault = None

        error: UcError | None = None
        native = self.native
        native.error = None
        self._images_untranslated = False
        try:
            uc.emu_start(entry.bpf_func, SENTINEL, count=budget * X86_INSNS_PER_BPF_INSN)
        except UcError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a hook's bug must not become a traceback mid-fuzz
            self._fault = (FAULT_INVALID, regs.read(x86.UC_X86_REG_RIP), f"emulator hook failed: {exc!r}")
        hook_error, native.error = native.error, None
        if hook_error is not None and error is None:
            # what the binding does with a hook's exception: emu_start raises it once the machine stopped
            if not isinstance(hook_error, Exception):
                raise hook_error          # Ctrl-C, SystemExit: not the run's business
            self._fault = (FAULT_INVALID, regs.read(x86.UC_X86_REG_RIP), f"emulator hook failed: {hook_error!r}")

        rip, rax = self._run_end.read()
        n = self.mem_len
        view = self._mem_view
        mem_after = bytes(view[len(view) - n:]) if view is not None and n else self.read(self.mem_start, n)
        result = RawRun(exit=EXIT, rax=rax, trace=self._trace, tail_calls=max(len(self._trace) - 1, 0),
                        mem=mem_after, violations=self._violations)
        if error is not None:
            kind = UC_ERROR_FAULT_KINDS.get(error.errno, FAULT_INVALID)
            if kind == FAULT_MEMORY and regs.read(x86.UC_X86_REG_RSP) < STACK_BASE + STACK_OVERFLOW_MARGIN:
                kind = FAULT_STACK_OVERFLOW      # the kernel stack ran out (the guard page below it)
            self._fill_fault(result, kind, rip, f"{error} at rip 0x{rip:x}")
        elif self._fault is not None:
            kind, fault_rip, reason = self._fault
            self._fill_fault(result, kind, fault_rip, reason)
        elif rip != SENTINEL:
            result.exit = TIMEOUT
        return result

    def _fill_fault(self, result: RawRun, kind: str, rip: int | None, reason: str) -> None:
        result.exit = FAULT
        result.fault_kind = kind
        result.fault_reason = reason
        text = self.text_at(rip) if rip is not None else None
        if text is not None:
            result.fault_prog = text.prog
            result.fault_pc = text.insn_at(rip)

    # -- hooks (they must never raise: unicorn would swallow the traceback) ----------
    def _on_helper(self, uc: Uc, address: int, size: int, user_data: object) -> None:
        if self._fault is not None:
            return
        helper_id = (address - HELPER_BASE) // HELPER_SLOT
        r1, r2, r3, r4, r5, rsp = self._helper_args.read()
        # The `call` pushed its return address; the fault belongs to the call site.
        try:
            call_site: int | None = self._read_int(rsp, 8) - 1
        except UcError:      # reached without a call (a wild jump) and with a bad stack
            call_site = None
        handler = self.helper_handler
        try:
            if handler is None:
                raise HelperFault(FAULT_INVALID, "no helper handler installed")
            r0 = handler(helper_id, r1, r2, r3, r4, r5)
        except HelperFault as fault:
            self._stop_with_fault(fault.kind, call_site, fault.reason)
            return
        except Exception as exc:  # noqa: BLE001
            self._stop_with_fault(FAULT_INVALID, call_site, f"helper {helper_id} failed: {exc!r}")
            return
        self._helper_results.write((r0 & 0xFFFF_FFFF_FFFF_FFFF, *HELPER_POISON))

    def _stop_with_fault(self, kind: str, rip: int | None, reason: str) -> None:
        self._fault = (kind, rip, reason)
        self.uc.emu_stop()

    def _on_mem_slack(self, uc: Uc, access: int, address: int, size: int, value: int, user_data: object) -> None:
        if self._fault is None:
            what = "write" if access == ucc.UC_MEM_WRITE else "read"
            self._stop_with_fault(FAULT_MEMORY, self.regs.read(x86.UC_X86_REG_RIP),
                                  f"{what} of {size} bytes at 0x{address:x}, before the packet/context "
                                  f"(0x{self.mem_start:x}, {self.mem_len} bytes)")

    def _on_value_slack(self, uc: Uc, access: int, address: int, size: int, value: int,
                        block: tuple[int, int]) -> None:
        if self._fault is None:
            what = "write" if access == ucc.UC_MEM_WRITE else "read"
            self._stop_with_fault(FAULT_MEMORY, self.regs.read(x86.UC_X86_REG_RIP),
                                  f"{what} of {size} bytes at 0x{address:x}, before map values "
                                  f"(0x{block[0]:x}, {block[1]} bytes)")

    def _on_direct_site(self, uc: Uc, address: int, size: int, where: tuple[memoryview, int] | None) -> None:
        # Runs before the site's instruction: a jmp rel32 there is a tail call (a nop5, an empty slot).
        # ``where``: the site's bytes in host memory (the text pokes write there), None: read them.
        if where is None:
            code = self.read(address, X86_PATCH_SIZE)
        else:
            view, offset = where
            code = view[offset:offset + X86_PATCH_SIZE]
        if code[0] == JMP_REL32:
            self._enter_by_tail_call(address, address + 5 + int.from_bytes(code[1:5], "little", signed=True))

    def _on_indirect_jump(self, uc: Uc, address: int, size: int, reg: int) -> None:
        self._enter_by_tail_call(address, self.regs.read(reg))

    def _enter_by_tail_call(self, jump: int, dest: int) -> None:
        """The tail-call jump at ``jump`` is about to go to ``dest``: the program whose image holds it is entered."""
        entry = self._entered.get(dest, _UNSEEN)
        if entry is _UNSEEN:
            text = self.text_at(dest)
            entry = self._entered[dest] = self._entries.get(text.prog) if text is not None else None
        if entry is None:
            return        # a jump out of every image: fetching there faults, which the run reports
        self._trace.append(entry.name)
        if dest != entry.tail_entry:
            # Every tail call lands on bpf_func + the profile's tail-call offset
            # (the direct sites' poke check says so for the bytes; this also
            # covers indirect jumps, whose target is computed at run time).
            source = self.text_at(jump)
            self._violations.append(
                f"{source.prog if source else '?'}: tail call at 0x{jump:x} jumps into {entry.name} "
                f"at +0x{dest - entry.bpf_func:x}, not at its tail-call entry +0x{entry.tail_entry - entry.bpf_func:x}")
        if (not self._subprog_tail_call and self._frame_rbp is not None
                and self.regs.read(x86.UC_X86_REG_RBP) != self._frame_rbp):
            # A subprogram tail-called (the jump keeps the caller's rbp): 6.1
            # gives subprograms a *copy* of the counter, which no longer counts
            # the whole run.
            self._subprog_tail_call = True
        self._in_prologue = entry

    def _on_prologue_point(self, uc: Uc, address: int, size: int, entry: EntryPoint) -> None:
        # The body may also be reached by a loop back to pc 0, which enters nothing.
        if self._in_prologue is entry:
            # Prologue done (a jump back to pc 0 of a loop is not an entry).
            self._in_prologue = None
            check = entry.tail_call_cnt_off is not None and not self._subprog_tail_call
            if self._frame_rbp is None or check:          # else rbp is not needed: no register read
                rbp = self.regs.read(x86.UC_X86_REG_RBP)
                if self._frame_rbp is None:
                    self._frame_rbp = rbp
                if check:
                    self._check_counter(uc, entry, rbp)

    def _check_counter(self, uc: Uc, entry: EntryPoint, rbp: int) -> None:
        """After the prologue, the frame's counter must cover the tail calls taken so far.

        Not equal: like the interpreter (core.c), the JIT counts an attempt
        before it reads the slot, so a call through an empty slot counts too.
        """
        taken = len(self._trace) - 1
        slot = rbp + entry.tail_call_cnt_off
        try:
            if entry.tail_call_cnt_ptr:
                slot = self._read_int(slot, 8)
            counter = self._read_int(slot, 4)
        except UcError:
            # rbp is not a frame (a tail call landed past `mov rbp,rsp`): the
            # program will most likely fault; say why here.
            self._violations.append(f"{entry.name}: counter slot 0x{slot:x} (rbp 0x{rbp:x}) is not mapped")
            return
        if counter < taken:
            self._violations.append(
                f"{entry.name} entered after {taken} tail calls, but its counter at "
                f"rbp{entry.tail_call_cnt_off:+#x} holds only {counter}")
