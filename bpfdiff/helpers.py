"""BPF helper functions: one implementation, called by every engine.

The interpreter calls :func:`call_helper` for ``call imm`` instructions; the
JIT runner calls it when the emitted ``call`` reaches the helper's address in
unicorn.  Each engine provides a :class:`HelperEnv` (its memory and its maps);
the semantics here are the kernel's (kernel/bpf/helpers.c):

==  =====================  ==================================================
id  helper                 result
==  =====================  ==================================================
1   map_lookup_elem        address of the value for the key at R2, or 0
2   map_update_elem        0 / -errno, key at R2, value at R3, flags R4
3   map_delete_elem        0 / -errno, key at R2
7   get_prandom_u32        next number of the run's generator (see Prandom)
8   get_smp_processor_id   0 (one CPU)
12  tail_call              never called here: control flow in the engines
==  =====================  ==================================================

Errors become :class:`HelperFault` with an engine fault kind: a helper the
engines do not model or a map kind the verifier would refuse for it is
``FAULT_UNSUPPORTED``; the engine's ``read``/``write`` raise it with
``FAULT_MEMORY`` for a bad pointer.

Register clobbering policy (both engines): after a helper returns, R1-R5 hold
:data:`CLOBBER_VALUES` (``0xdeadbeef_0000_000N`` for RN).  The kernel leaves
them undefined and the verifier refuses programs that read them, so a valid
program never sees these values; poisoning them makes a program (or a JIT)
that relies on them visible instead of silently agreeing by luck.  The JIT
runner writes the same values into rdi, rsi, rdx, rcx and r8 before
returning from a helper, so both engines agree even on invalid programs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bpfdiff.engine import FAULT_UNSUPPORTED
from bpfdiff.isa import (
    KERNEL_FUNC_NAMES,
    BPF_FUNC_get_prandom_u32,
    BPF_FUNC_get_smp_processor_id,
    BPF_FUNC_map_delete_elem,
    BPF_FUNC_map_lookup_elem,
    BPF_FUNC_map_update_elem,
    BPF_FUNC_tail_call,
)
from bpfdiff.maps import BpfMap, ProgArrayMap
from bpfdiff.profiles import Profile

U64_MASK = (1 << 64) - 1

# R1..R5 after any helper call (see the module docstring).
CLOBBER_VALUES: dict[int, int] = {reg: 0xDEADBEEF_00000000 | reg for reg in range(1, 6)}


class HelperFault(Exception):
    """A helper call the engines must report as a fault of ``kind``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Prandom:
    """``bpf_get_prandom_u32``'s generator: splitmix64 seeded per run.

    Seed rule: every Run event starts a fresh generator from
    ``(engine seed, event index)`` via :meth:`for_run`, so the n-th call in a
    run returns the same number in every engine regardless of earlier runs.
    The kernel's numbers are not reproducible at all; only agreement matters.
    """

    __slots__ = ("state",)
    GOLDEN = 0x9E3779B97F4A7C15

    def __init__(self, seed: int) -> None:
        self.state = seed & U64_MASK

    @classmethod
    def for_run(cls, seed: int, event_index: int) -> Prandom:
        return cls(((seed & 0xFFFFFFFF) << 32) ^ (event_index & 0xFFFFFFFF) ^ 0x5EED_0F_B9F)

    def next_u32(self) -> int:
        self.state = (self.state + self.GOLDEN) & U64_MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64_MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64_MASK
        z ^= z >> 31
        return z >> 32


class HelperEnv(Protocol):
    """What a helper needs from the engine running it."""

    prandom: Prandom

    def map_at(self, addr: int) -> BpfMap | None:
        """The map whose pointer (what ``lddw rX, map:NAME`` loaded) is ``addr``, or None."""

    def read(self, addr: int, n: int) -> bytes:
        """Read program-visible memory; raise HelperFault(FAULT_MEMORY, ...) when not mapped."""

    def write(self, addr: int, data: bytes) -> None:
        """Write program-visible memory; raise HelperFault(FAULT_MEMORY, ...) when not mapped."""


Helper = Callable[[HelperEnv, int, int, int, int, int], int]


def _data_map(env: HelperEnv, addr: int, helper: str) -> BpfMap:
    """The array/hash map at ``addr``: what the verifier allows for the map helpers."""
    bpf_map = env.map_at(addr)
    if bpf_map is None:
        raise HelperFault(FAULT_UNSUPPORTED, f"{helper}: R1=0x{addr:x} is not a map pointer")
    if isinstance(bpf_map, ProgArrayMap):
        raise HelperFault(FAULT_UNSUPPORTED, f"{helper} on prog_array {bpf_map.name!r} (verifier refuses it)")
    return bpf_map


def map_lookup_elem(env: HelperEnv, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    bpf_map = _data_map(env, r1, "map_lookup_elem")
    return bpf_map.lookup(env.read(r2, bpf_map.key_size))


def map_update_elem(env: HelperEnv, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    bpf_map = _data_map(env, r1, "map_update_elem")
    key = env.read(r2, bpf_map.key_size)
    value = env.read(r3, bpf_map.value_size)
    return bpf_map.update(key, value, r4)


def map_delete_elem(env: HelperEnv, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    bpf_map = _data_map(env, r1, "map_delete_elem")
    return bpf_map.delete(env.read(r2, bpf_map.key_size))


def get_prandom_u32(env: HelperEnv, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    return env.prandom.next_u32()


# The CPU every run is on (the kernel engines' guests have one: qemu -smp 1); also what the JIT
# engine's per-CPU area holds for an inlined bpf_get_smp_processor_id.
SMP_PROCESSOR_ID = 0
NR_CPU_IDS = 1


def known_cpu_id(profile: Profile) -> int | None:
    """What the verifier knows R0 is after ``bpf_get_smp_processor_id``: with the return range
    [0, nr_cpu_ids - 1] (``Profile.verifier_cpu_id_range``) and one CPU, the constant 0; else None."""
    return NR_CPU_IDS - 1 if profile.verifier_cpu_id_range and NR_CPU_IDS == 1 else None


def get_smp_processor_id(env: HelperEnv, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    return SMP_PROCESSOR_ID


def tail_call(env: HelperEnv, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    # The verifier rewrites the call into BPF_TAIL_CALL; both engines treat it
    # as control flow, so reaching this is an engine bug, reported loudly.
    raise HelperFault(FAULT_UNSUPPORTED, "bpf_tail_call reached the helper table (engine bug)")


HELPERS: dict[int, tuple[str, Helper]] = {
    BPF_FUNC_map_lookup_elem: ("map_lookup_elem", map_lookup_elem),
    BPF_FUNC_map_update_elem: ("map_update_elem", map_update_elem),
    BPF_FUNC_map_delete_elem: ("map_delete_elem", map_delete_elem),
    BPF_FUNC_get_prandom_u32: ("get_prandom_u32", get_prandom_u32),
    BPF_FUNC_get_smp_processor_id: ("get_smp_processor_id", get_smp_processor_id),
    BPF_FUNC_tail_call: ("tail_call", tail_call),
}


# Helpers the kernel has and bpfdiff does not run, by their UAPI id (include/uapi/linux/bpf.h):
# named only, so that compare-jit can tell a call of one is the kernel's (conformance
# call_unwind_fail.data calls bpf_ktime_get_ns).
UNIMPLEMENTED_HELPER_NAMES = {5: "ktime_get_ns", 6: "trace_printk"}


def helper_name(helper_id: int) -> str:
    entry = HELPERS.get(helper_id)
    if entry:
        return entry[0]
    return KERNEL_FUNC_NAMES.get(helper_id) or UNIMPLEMENTED_HELPER_NAMES.get(helper_id, f"helper#{helper_id}")


def kernel_symbol(helper_id: int) -> str:
    """The kernel function a call of ``helper_id`` reaches: ``bpf_<helper>`` (BPF_CALL_x(bpf_map_lookup_elem,
    ...)), or the kernel function itself for the ids the verifier's rewrites call (``__htab_map_lookup_elem``)."""
    return KERNEL_FUNC_NAMES.get(helper_id) or f"bpf_{helper_name(helper_id)}"


def call_helper(env: HelperEnv, helper_id: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    """Run helper ``helper_id``; returns R0 as an unsigned 64-bit value.

    Raises :class:`HelperFault` for an unknown helper (FAULT_UNSUPPORTED) or
    whatever the helper raises (bad pointers: FAULT_MEMORY from the env).
    """
    entry = HELPERS.get(helper_id)
    if entry is None:
        raise HelperFault(FAULT_UNSUPPORTED, f"unknown helper id {helper_id}")
    return entry[1](env, r1, r2, r3, r4, r5) & U64_MASK
