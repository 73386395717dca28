"""What the verifier knows about a scalar register: ``struct bpf_reg_state``'s tnum and bounds.

Our own Python rendering of the algorithms of ``kernel/bpf/tnum.c`` and the
scalar half of ``kernel/bpf/verifier.c`` (6.1: ``adjust_scalar_min_max_vals``
with its ``scalar{,32}_min_max_*`` helpers, ``reg_bounds_sync``,
``coerce_reg_to_size``, ``is_branch_taken``, ``reg_set_min_max``), used by
the path-sensitive verifier model (:mod:`bpfdiff.verifier`) to decide what a
privileged load's kernel decides: which conditional jumps are known, which
tail-call keys are constants.

A :class:`Scalar` is a plain tuple (hashable: states are compared and
deduplicated per instruction): ``(value, mask, umin, umax, smin, smax, u32min,
u32max, s32min, s32max)``.  Values are Python ints: unsigned fields in
``[0, 2**N)``, signed ones in ``[-2**(N-1), 2**(N-1))``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from bpfdiff import memo

_F = TypeVar("_F", bound=Callable)

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
S64_MIN, S64_MAX = -(1 << 63), (1 << 63) - 1
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1

# opcodes (the BPF_OP bits) used here
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0)
JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, JLT, JLE, JSLT, JSLE = (
    0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0, 0xC0, 0xD0)


def s64(v: int) -> int:
    v &= U64
    return v - (1 << 64) if v >> 63 else v


def s32(v: int) -> int:
    v &= U32
    return v - (1 << 32) if v >> 31 else v


# -- tnum: (value, mask), a bit is unknown where mask has it -----------------------------------
def t_range(lo: int, hi: int) -> tuple[int, int]:
    chi = lo ^ hi
    bits = chi.bit_length()
    if bits > 63:
        return 0, U64
    delta = (1 << bits) - 1
    return lo & ~delta & U64, delta


def t_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    sm = (a[1] + b[1]) & U64
    sv = (a[0] + b[0]) & U64
    sigma = (sm + sv) & U64
    chi = sigma ^ sv
    mu = chi | a[1] | b[1]
    return sv & ~mu & U64, mu


def t_sub(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    dv = (a[0] - b[0]) & U64
    alpha = (dv + a[1]) & U64
    beta = (dv - b[1]) & U64
    chi = alpha ^ beta
    mu = chi | a[1] | b[1]
    return dv & ~mu & U64, mu


def t_and(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    alpha = a[0] | a[1]
    beta = b[0] | b[1]
    v = a[0] & b[0]
    return v, alpha & beta & ~v & U64


def t_or(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    v = a[0] | b[0]
    mu = a[1] | b[1]
    return v, mu & ~v & U64


def t_xor(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    v = a[0] ^ b[0]
    mu = a[1] | b[1]
    return v & ~mu & U64, mu


def t_lshift(a: tuple[int, int], s: int) -> tuple[int, int]:
    return (a[0] << s) & U64, (a[1] << s) & U64


def t_rshift(a: tuple[int, int], s: int) -> tuple[int, int]:
    return a[0] >> s, a[1] >> s


def t_arshift(a: tuple[int, int], s: int, bits: int) -> tuple[int, int]:
    if bits == 32:
        return (s32(a[0]) >> s) & U32, (s32(a[1]) >> s) & U32
    return (s64(a[0]) >> s) & U64, (s64(a[1]) >> s) & U64


def t_mul(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    acc_v = (a[0] * b[0]) & U64
    acc_m = (0, 0)
    while a[0] or a[1]:
        if a[0] & 1:
            acc_m = t_add(acc_m, (0, b[1]))
        elif a[1] & 1:
            acc_m = t_add(acc_m, (0, b[0] | b[1]))
        a = t_rshift(a, 1)
        b = t_lshift(b, 1)
    return t_add((acc_v, 0), acc_m)


def t_intersect(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    v = a[0] | b[0]
    mu = a[1] & b[1]
    return v & ~mu & U64, mu


def t_cast(a: tuple[int, int], size: int) -> tuple[int, int]:
    m = (1 << (size * 8)) - 1
    return a[0] & m, a[1] & m


def t_subreg(a: tuple[int, int]) -> tuple[int, int]:
    return a[0] & U32, a[1] & U32


def t_clear_subreg(a: tuple[int, int]) -> tuple[int, int]:
    return a[0] & ~U32 & U64, a[1] & ~U32 & U64


def t_in(a: tuple[int, int], b: tuple[int, int]) -> bool:
    if b[1] & ~a[1]:
        return False
    return a[0] == b[0] & ~a[1]


class Scalar(NamedTuple):
    value: int
    mask: int
    umin: int
    umax: int
    smin: int
    smax: int
    u32min: int
    u32max: int
    s32min: int
    s32max: int

    @property
    def is_const(self) -> bool:
        return self.mask == 0

    @property
    def subreg_is_const(self) -> bool:
        return self.mask & U32 == 0


@memo.forgettable
@functools.lru_cache(maxsize=1 << 16)     # every immediate of every program asks
def known(v: int) -> Scalar:
    """__mark_reg_known."""
    v &= U64
    return Scalar(v, 0, v, v, s64(v), s64(v), v & U32, v & U32, s32(v), s32(v))


UNKNOWN = Scalar(0, U64, 0, U64, S64_MIN, S64_MAX, 0, U32, S32_MIN, S32_MAX)

# The path-sensitive model asks the functions below the same questions again and again (every
# path through an instruction, the same constants in program after program).  They are pure
# functions of hashable values (Scalars are tuples of ints), so their answers are remembered.
def _remembered(fn: _F) -> _F:
    return memo.forgettable(functools.lru_cache(maxsize=1 << 15)(fn))


class _R:
    """A mutable bpf_reg_state (scalar part) for the kernel's in-place algorithms."""

    __slots__ = Scalar._fields

    def __init__(self, s: Scalar) -> None:
        (self.value, self.mask, self.umin, self.umax, self.smin, self.smax,
         self.u32min, self.u32max, self.s32min, self.s32max) = s

    def freeze(self) -> Scalar:
        return Scalar(self.value, self.mask, self.umin, self.umax, self.smin, self.smax,
                      self.u32min, self.u32max, self.s32min, self.s32max)

    @property
    def off(self) -> tuple[int, int]:
        return self.value, self.mask

    @off.setter
    def off(self, t: tuple[int, int]) -> None:
        self.value, self.mask = t

    def unbound64(self) -> None:
        self.umin, self.umax, self.smin, self.smax = 0, U64, S64_MIN, S64_MAX

    def unbound32(self) -> None:
        self.u32min, self.u32max, self.s32min, self.s32max = 0, U32, S32_MIN, S32_MAX

    def mark_known(self, v: int) -> None:
        (self.value, self.mask, self.umin, self.umax, self.smin, self.smax,
         self.u32min, self.u32max, self.s32min, self.s32max) = known(v)

    def mark_known32(self, v: int) -> None:
        v &= U32
        self.off = t_or(t_clear_subreg(self.off), (v, 0))
        self.s32min = self.s32max = s32(v)
        self.u32min = self.u32max = v

    def mark_unknown(self) -> None:
        (self.value, self.mask, self.umin, self.umax, self.smin, self.smax,
         self.u32min, self.u32max, self.s32min, self.s32max) = UNKNOWN

    # __update_reg_bounds
    def update32(self) -> None:
        v, m = self.value & U32, self.mask & U32          # t_subreg(self.off)
        self.s32min = max(self.s32min, s32(v | (m & 0x80000000)))
        self.s32max = min(self.s32max, s32(v | (m & 0x7FFFFFFF)))
        self.u32min = max(self.u32min, v)
        self.u32max = min(self.u32max, v | m)

    def update64(self) -> None:
        v, m = self.value, self.mask
        self.smin = max(self.smin, s64(v | (m & (1 << 63))))
        self.smax = min(self.smax, s64(v | (m & S64_MAX)))
        self.umin = max(self.umin, v)
        self.umax = min(self.umax, v | m)

    def update(self) -> None:
        self.update32()
        self.update64()

    # __reg_deduce_bounds
    def deduce32(self) -> None:
        if self.s32min >= 0 or self.s32max < 0:
            lo = max(self.s32min & U32, self.u32min)
            hi = min(self.s32max & U32, self.u32max)
            self.s32min, self.u32min = s32(lo), lo
            self.s32max, self.u32max = s32(hi), hi
            return
        if s32(self.u32max) >= 0:
            self.s32min = s32(self.u32min)
            hi = min(self.s32max & U32, self.u32max)
            self.s32max, self.u32max = s32(hi), hi
        elif s32(self.u32min) < 0:
            lo = max(self.s32min & U32, self.u32min)
            self.s32min, self.u32min = s32(lo), lo
            self.s32max = s32(self.u32max)

    def deduce64(self) -> None:
        if self.smin >= 0 or self.smax < 0:
            lo = max(self.smin & U64, self.umin)
            hi = min(self.smax & U64, self.umax)
            self.smin, self.umin = s64(lo), lo
            self.smax, self.umax = s64(hi), hi
            return
        if s64(self.umax) >= 0:
            self.smin = s64(self.umin)
            hi = min(self.smax & U64, self.umax)
            self.smax, self.umax = s64(hi), hi
        elif s64(self.umin) < 0:
            lo = max(self.smin & U64, self.umin)
            self.smin, self.umin = s64(lo), lo
            self.smax = s64(self.umax)

    def deduce(self) -> None:
        self.deduce32()
        self.deduce64()

    def bound_offset(self) -> None:
        """__reg_bound_offset."""
        off = self.value, self.mask
        var64 = t_intersect(off, t_range(self.umin, self.umax))
        var32 = t_intersect(t_subreg(off), t_range(self.u32min, self.u32max))
        self.value, self.mask = t_or(t_clear_subreg(var64), var32)

    def sync(self) -> None:
        """reg_bounds_sync: update(), deduce(), bound_offset(), update() -- written out in one
        body on local variables, the same arithmetic step by step (the model runs it after
        nearly every ALU result it computes, and the calls cost more than the arithmetic;
        tests/test_verifier_paths.py holds it against the four methods)."""
        value, mask = self.value, self.mask
        umin, umax, smin, smax = self.umin, self.umax, self.smin, self.smax
        u32min, u32max, s32min, s32max = self.u32min, self.u32max, self.s32min, self.s32max
        for second in (False, True):
            # update32 (s32(x): x & U32, minus 2**32 when bit 31 is set)
            v, m = value & U32, mask & U32
            x = v | (m & 0x80000000)
            x = x - 0x100000000 if x & 0x80000000 else x
            if x > s32min:
                s32min = x
            x = v | (m & 0x7FFFFFFF)
            x = x - 0x100000000 if x & 0x80000000 else x
            if x < s32max:
                s32max = x
            if v > u32min:
                u32min = v
            if v | m < u32max:
                u32max = v | m
            # update64
            x = (value | (mask & (1 << 63))) & U64
            x = x - (1 << 64) if x >> 63 else x
            if x > smin:
                smin = x
            x = (value | (mask & S64_MAX)) & U64
            x = x - (1 << 64) if x >> 63 else x
            if x < smax:
                smax = x
            if value > umin:
                umin = value
            if value | mask < umax:
                umax = value | mask
            if second:
                break
            # deduce32
            if s32min >= 0 or s32max < 0:
                lo, hi = s32min & U32, s32max & U32
                if u32min > lo:
                    lo = u32min
                if u32max < hi:
                    hi = u32max
                u32min, u32max = lo, hi
                lo &= U32
                hi &= U32
                s32min = lo - 0x100000000 if lo & 0x80000000 else lo
                s32max = hi - 0x100000000 if hi & 0x80000000 else hi
            elif u32max & U32 < 0x80000000:                 # s32(u32max) >= 0
                x = u32min & U32
                s32min = x - 0x100000000 if x & 0x80000000 else x
                hi = s32max & U32
                if u32max < hi:
                    hi = u32max
                u32max = hi
                hi &= U32
                s32max = hi - 0x100000000 if hi & 0x80000000 else hi
            elif u32min & U32 >= 0x80000000:                # s32(u32min) < 0
                lo = s32min & U32
                if u32min > lo:
                    lo = u32min
                u32min = lo
                lo &= U32
                s32min = lo - 0x100000000 if lo & 0x80000000 else lo
                x = u32max & U32
                s32max = x - 0x100000000 if x & 0x80000000 else x
            # deduce64
            if smin >= 0 or smax < 0:
                lo, hi = smin & U64, smax & U64
                if umin > lo:
                    lo = umin
                if umax < hi:
                    hi = umax
                umin, umax = lo, hi
                lo &= U64
                hi &= U64
                smin = lo - (1 << 64) if lo >> 63 else lo
                smax = hi - (1 << 64) if hi >> 63 else hi
            elif umax & U64 <= S64_MAX:                     # s64(umax) >= 0
                x = umin & U64
                smin = x - (1 << 64) if x >> 63 else x
                hi = smax & U64
                if umax < hi:
                    hi = umax
                umax = hi
                hi &= U64
                smax = hi - (1 << 64) if hi >> 63 else hi
            elif umin & U64 > S64_MAX:                      # s64(umin) < 0
                lo = smin & U64
                if umin > lo:
                    lo = umin
                umin = lo
                lo &= U64
                smin = lo - (1 << 64) if lo >> 63 else lo
                x = umax & U64
                smax = x - (1 << 64) if x >> 63 else x
            # bound_offset
            v64, m64 = t_intersect((value, mask), t_range(umin, umax))
            v32, m32 = t_intersect((value & U32, mask & U32), t_range(u32min, u32max))
            value, mask = t_or(t_clear_subreg((v64, m64)), (v32, m32))
        self.value, self.mask = value, mask
        self.umin, self.umax, self.smin, self.smax = umin, umax, smin, smax
        self.u32min, self.u32max, self.s32min, self.s32max = u32min, u32max, s32min, s32max

    # -- reg_bounds_sync since v6.8 (Andrii Nakryiko's range series): the 64-bit and 32-bit
    # ranges also inform each other, where the older code only relates signed and unsigned
    # bounds of one width.
    def deduce32_v6_8(self) -> None:
        """__reg32_deduce_bounds (v6.8)."""
        umin, umax, smin, smax = self.umin, self.umax, self.smin, self.smax
        if umin >> 32 == umax >> 32:        # the low halves of a range with one upper half
            self.u32min = max(self.u32min, umin & U32)
            self.u32max = min(self.u32max, umax & U32)
            if s32(umin & U32) <= s32(umax & U32):
                self.s32min = max(self.s32min, s32(umin & U32))
                self.s32max = min(self.s32max, s32(umax & U32))
        if smin >> 32 == smax >> 32:
            if smin & U32 <= smax & U32:
                self.u32min = max(self.u32min, smin & U32)
                self.u32max = min(self.u32max, smax & U32)
            if s32(smin & U32) <= s32(smax & U32):
                self.s32min = max(self.s32min, s32(smin & U32))
                self.s32max = min(self.s32max, s32(smax & U32))
        # upper halves two consecutive numbers, the low halves crossing from negative to positive
        for lo, hi in ((umin, umax), (smin & U64, smax & U64)):
            if ((lo >> 32) + 1) & U32 == (hi >> 32) & U32 and s32(lo & U32) < 0 <= s32(hi & U32):
                self.s32min = max(self.s32min, s32(lo & U32))
                self.s32max = min(self.s32max, s32(hi & U32))
        if s32(self.u32min) <= s32(self.u32max):
            self.s32min = max(self.s32min, s32(self.u32min))
            self.s32max = min(self.s32max, s32(self.u32max))
        if self.s32min & U32 <= self.s32max & U32:
            self.u32min = max(self.s32min & U32, self.u32min)
            self.u32max = min(self.s32max & U32, self.u32max)

    def deduce64_v6_8(self) -> None:
        """__reg64_deduce_bounds (v6.8)."""
        if s64(self.umin) <= s64(self.umax):
            self.smin = max(self.smin, s64(self.umin))
            self.smax = min(self.smax, s64(self.umax))
        if self.smin & U64 <= self.smax & U64:
            self.umin = max(self.smin & U64, self.umin)
            self.umax = min(self.smax & U64, self.umax)

    def deduce_mixed(self) -> None:
        """__reg_deduce_mixed_bounds: the 64-bit bounds tightened by the 32-bit ones."""
        hi_mask = U64 & ~U32
        self.umin = max(self.umin, (self.umin & hi_mask) | self.u32min)
        self.umax = min(self.umax, (self.umax & hi_mask) | self.u32max)
        self.smin = max(self.smin, s64((self.smin & hi_mask) | self.u32min))
        self.smax = min(self.smax, s64((self.smax & hi_mask) | self.u32max))
        lo, hi = self.s32min & U32, self.s32max & U32
        if lo <= hi:
            self.umin = max(self.umin, (self.umin & hi_mask) | lo)
            self.umax = min(self.umax, (self.umax & hi_mask) | hi)
            self.smin = max(self.smin, s64((self.smin & hi_mask) | lo))
            self.smax = min(self.smax, s64((self.smax & hi_mask) | hi))
        # a sign-extended 32-bit value whose low half is non-negative: the upper half is zero
        if self.s32min >= 0 and self.smin >= S32_MIN and self.smax <= S32_MAX:
            self.smin = self.umin = self.s32min
            self.smax = self.umax = self.s32max
            self.off = t_intersect(self.off, t_range(self.smin, self.smax))

    def sync_v6_8(self) -> None:
        """reg_bounds_sync (v6.8)."""
        self.update()
        for _ in range(2):
            self.deduce32_v6_8()
            self.deduce64_v6_8()
            self.deduce_mixed()
        self.bound_offset()
        self.update()

    def assign_32_into_64(self) -> None:
        self.umin, self.umax = self.u32min, self.u32max
        if 0 <= self.s32min <= S32_MAX and 0 <= self.s32max <= S32_MAX:
            self.smin, self.smax = self.s32min, self.s32max
        else:
            self.smin, self.smax = 0, U32

    def zext_32_to_64(self) -> None:
        self.off = t_subreg(self.off)
        self.assign_32_into_64()

    def combine_64_into_32(self) -> None:
        self.unbound32()
        if S32_MIN <= self.smin <= S32_MAX and S32_MIN <= self.smax <= S32_MAX:
            self.s32min, self.s32max = self.smin, self.smax
        if self.umin <= U32 and self.umax <= U32:
            self.u32min, self.u32max = self.umin, self.umax
        self.sync()

    def combine_32_into_64(self) -> None:
        self.unbound64()
        if t_clear_subreg(self.off) == (0, 0):
            self.assign_32_into_64()
        else:
            self.deduce()
            self.bound_offset()
        self.update()


@_remembered
def coerce(s: Scalar, size: int) -> Scalar:
    """coerce_reg_to_size: what a load of ``size`` bytes (or a narrower use) leaves."""
    if size >= 8:
        return s
    r = _R(s)
    r.off = t_cast(r.off, size)
    mask = (1 << (size * 8)) - 1
    if r.umin & ~mask == r.umax & ~mask:
        r.umin &= mask
        r.umax &= mask
    else:
        r.umin, r.umax = 0, mask
    r.smin, r.smax = r.umin, r.umax
    if size < 4:
        r.combine_64_into_32()
    return r.freeze()


def unknown_of_size(size: int) -> Scalar:
    """A register loaded with ``size`` unknown bytes (mark_reg_unknown + coerce_reg_to_size)."""
    return coerce(UNKNOWN, size)


def is_unbounded(s: Scalar) -> bool:
    """__is_scalar_unbounded: nothing known at all (register_is_bounded is its negation)."""
    return s == UNKNOWN


@_remembered
def zext(s: Scalar) -> Scalar:
    """A 32-bit move's result: the low half, zero-extended (zext_32_to_64 + reg_bounds_sync)."""
    r = _R(s)
    r.zext_32_to_64()
    r.sync()
    return r.freeze()


# -- adjust_scalar_min_max_vals -------------------------------------------------------------------
@_remembered
def alu(op: int, alu32: bool, dst: Scalar, src: Scalar, safe_range: bool = False,
        bounds_v6_8: bool = False) -> Scalar:
    """The scalar result of ``dst op= src`` (op an ALU opcode other than MOV/NEG/END).

    ``safe_range``: the kernel asks is_safe_to_compute_dst_reg_range first (profile field
    ``verifier_safe_dst_range``, v6.10): XOR, OR and MUL compute bounds whatever the source, and
    what it calls unsafe (a shift by the width or more, div, mod) leaves the whole register
    unknown -- not zero-extended after a 32-bit op, as the older code does.  ``bounds_v6_8``:
    the result's bounds synced as since v6.8 (:meth:`_R.sync_v6_8`)."""
    if dst.mask == 0 and src.mask == 0:
        exact = _const_alu(op, alu32, dst.value, src.value)
        if exact is not None:
            return exact
    d = _R(dst)
    if alu32:
        src_known = src.subreg_is_const
        if (src_known and (src.s32min != src.s32max or src.u32min != src.u32max)) or \
                src.s32min > src.s32max or src.u32min > src.u32max:
            return UNKNOWN
    else:
        src_known = src.is_const
        if (src_known and (src.smin != src.smax or src.umin != src.umax)) or \
                src.smin > src.smax or src.umin > src.umax:
            return UNKNOWN
    if not src_known and op not in ((ADD, SUB, AND, XOR, OR, MUL) if safe_range else (ADD, SUB, AND)):
        return UNKNOWN
    bits = 32 if alu32 else 64
    if op == ADD:
        _add32(d, src)
        _add64(d, src)
        d.off = t_add(d.off, (src.value, src.mask))
    elif op == SUB:
        _sub32(d, src)
        _sub64(d, src)
        d.off = t_sub(d.off, (src.value, src.mask))
    elif op == MUL:
        d.off = t_mul(d.off, (src.value, src.mask))
        _mul32(d, src)
        _mul64(d, src)
    elif op == AND:
        d.off = t_and(d.off, (src.value, src.mask))
        _and32(d, src)
        _and64(d, src)
    elif op == OR:
        d.off = t_or(d.off, (src.value, src.mask))
        _or32(d, src)
        _or64(d, src)
    elif op == XOR:
        d.off = t_xor(d.off, (src.value, src.mask))
        _xor32(d, src)
        _xor64(d, src)
    elif op in (LSH, RSH, ARSH):
        if src.umax >= bits:
            # the 64-bit umax of the source, for 32-bit shifts too: `w2 >>= w2` with
            # r2 = 0xffffffff00000000 leaves w2 unknown on 6.1 (measured)
            if safe_range:
                return UNKNOWN
            d.mark_unknown()            # then zero-extended like any 32-bit result
        elif op == LSH:
            (_lsh32 if alu32 else _lsh64)(d, src)
        elif op == RSH:
            (_rsh32 if alu32 else _rsh64)(d, src)
        else:
            (_arsh32 if alu32 else _arsh64)(d, src)
    else:
        if safe_range:
            return UNKNOWN
        d.mark_unknown()                # div, mod by a constant: unknown, still zero-extended
    if alu32:
        d.zext_32_to_64()
    if bounds_v6_8:
        d.sync_v6_8()
    else:
        d.sync()
    return d.freeze()


def _const_alu(op: int, alu32: bool, a: int, b: int) -> Scalar | None:
    """The result for two constants, without the bounds arithmetic: tnum operations on
    constants are exact and reg_bounds_sync pins every bound to the value (same answer as the
    general path, only faster).  None: let the general path decide (shifts out of range,
    div, mod)."""
    bits = 32 if alu32 else 64
    mask = U32 if alu32 else U64
    if op in (LSH, RSH, ARSH):
        if b >= bits:                # the 64-bit umax of the source: unknown (general path)
            return None
        x = a & mask
        if op == LSH:
            r = x << b
        elif op == RSH:
            r = x >> b
        else:
            r = (s32(x) if alu32 else s64(x)) >> b
        return known(r & mask)
    if op == ADD:
        r = a + b
    elif op == SUB:
        r = a - b
    elif op == MUL:
        r = a * b
    elif op == AND:
        r = a & b
    elif op == OR:
        r = a | b
    elif op == XOR:
        r = a ^ b
    else:
        return None
    return known(r & mask)


def _add32(d: _R, s: Scalar) -> None:
    lo, hi = d.s32min + s.s32min, d.s32max + s.s32max
    if S32_MIN <= lo <= S32_MAX and S32_MIN <= hi <= S32_MAX:
        d.s32min, d.s32max = lo, hi
    else:
        d.s32min, d.s32max = S32_MIN, S32_MAX
    if d.u32min + s.u32min > U32 or d.u32max + s.u32max > U32:
        d.u32min, d.u32max = 0, U32
    else:
        d.u32min, d.u32max = d.u32min + s.u32min, d.u32max + s.u32max


def _add64(d: _R, s: Scalar) -> None:
    lo, hi = d.smin + s.smin, d.smax + s.smax
    if S64_MIN <= lo <= S64_MAX and S64_MIN <= hi <= S64_MAX:
        d.smin, d.smax = lo, hi
    else:
        d.smin, d.smax = S64_MIN, S64_MAX
    if d.umin + s.umin > U64 or d.umax + s.umax > U64:
        d.umin, d.umax = 0, U64
    else:
        d.umin, d.umax = d.umin + s.umin, d.umax + s.umax


def _sub32(d: _R, s: Scalar) -> None:
    lo, hi = d.s32min - s.s32max, d.s32max - s.s32min
    if S32_MIN <= lo <= S32_MAX and S32_MIN <= hi <= S32_MAX:
        d.s32min, d.s32max = lo, hi
    else:
        d.s32min, d.s32max = S32_MIN, S32_MAX
    if d.u32min < s.u32max:
        d.u32min, d.u32max = 0, U32
    else:
        d.u32min, d.u32max = d.u32min - s.u32max, d.u32max - s.u32min


def _sub64(d: _R, s: Scalar) -> None:
    lo, hi = d.smin - s.smax, d.smax - s.smin
    if S64_MIN <= lo <= S64_MAX and S64_MIN <= hi <= S64_MAX:
        d.smin, d.smax = lo, hi
    else:
        d.smin, d.smax = S64_MIN, S64_MAX
    if d.umin < s.umax:
        d.umin, d.umax = 0, U64
    else:
        d.umin, d.umax = d.umin - s.umax, d.umax - s.umin


def _mul32(d: _R, s: Scalar) -> None:
    if s.s32min < 0 or d.s32min < 0:
        d.unbound32()
        return
    if s.u32max > 0xFFFF or d.u32max > 0xFFFF:
        d.unbound32()
        return
    d.u32min *= s.u32min
    d.u32max *= s.u32max
    if d.u32max > S32_MAX:
        d.s32min, d.s32max = S32_MIN, S32_MAX
    else:
        d.s32min, d.s32max = d.u32min, d.u32max


def _mul64(d: _R, s: Scalar) -> None:
    if s.smin < 0 or d.smin < 0:
        d.unbound64()
        return
    if s.umax > U32 or d.umax > U32:
        d.unbound64()
        return
    d.umin *= s.umin
    d.umax *= s.umax
    if d.umax > S64_MAX:
        d.smin, d.smax = S64_MIN, S64_MAX
    else:
        d.smin, d.smax = d.umin, d.umax


def _and32(d: _R, s: Scalar) -> None:
    var32 = t_subreg(d.off)
    if s.subreg_is_const and var32[1] == 0:
        d.mark_known32(var32[0])
        return
    d.u32min = var32[0]
    d.u32max = min(d.u32max, s.u32max)
    if d.s32min < 0 or s.s32min < 0:
        d.s32min, d.s32max = S32_MIN, S32_MAX
    else:
        d.s32min, d.s32max = d.u32min, d.u32max


def _and64(d: _R, s: Scalar) -> None:
    if s.is_const and d.mask == 0:
        d.mark_known(d.value)
        return
    d.umin = d.value
    d.umax = min(d.umax, s.umax)
    if d.smin < 0 or s.smin < 0:
        d.smin, d.smax = S64_MIN, S64_MAX
    else:
        d.smin, d.smax = d.umin, d.umax
    d.update()


def _or32(d: _R, s: Scalar) -> None:
    var32 = t_subreg(d.off)
    if s.subreg_is_const and var32[1] == 0:
        d.mark_known32(var32[0])
        return
    d.u32min = max(d.u32min, s.u32min)
    d.u32max = var32[0] | var32[1]
    if d.s32min < 0 or s.s32min < 0:
        d.s32min, d.s32max = S32_MIN, S32_MAX
    else:
        d.s32min, d.s32max = d.u32min, d.u32max


def _or64(d: _R, s: Scalar) -> None:
    if s.is_const and d.mask == 0:
        d.mark_known(d.value)
        return
    d.umin = max(d.umin, s.umin)
    d.umax = d.value | d.mask
    if d.smin < 0 or s.smin < 0:
        d.smin, d.smax = S64_MIN, S64_MAX
    else:
        d.smin, d.smax = d.umin, d.umax
    d.update()


def _xor32(d: _R, s: Scalar) -> None:
    var32 = t_subreg(d.off)
    if s.subreg_is_const and var32[1] == 0:
        d.mark_known32(var32[0])
        return
    d.u32min = var32[0]
    d.u32max = var32[0] | var32[1]
    if d.s32min >= 0 and s.s32min >= 0:
        d.s32min, d.s32max = d.u32min, d.u32max
    else:
        d.s32min, d.s32max = S32_MIN, S32_MAX


def _xor64(d: _R, s: Scalar) -> None:
    if s.is_const and d.mask == 0:
        d.mark_known(d.value)
        return
    d.umin = d.value
    d.umax = d.value | d.mask
    if d.smin >= 0 and s.smin >= 0:
        d.smin, d.smax = d.umin, d.umax
    else:
        d.smin, d.smax = S64_MIN, S64_MAX
    d.update()


def _lsh32_bounds(d: _R, umin: int, umax: int) -> None:
    d.s32min, d.s32max = S32_MIN, S32_MAX
    if umax > 31 or d.u32max > 1 << (31 - umax):
        d.u32min, d.u32max = 0, U32
    else:
        d.u32min = (d.u32min << umin) & U32
        d.u32max = (d.u32max << umax) & U32


def _lsh32(d: _R, s: Scalar) -> None:
    subreg = t_subreg(d.off)
    _lsh32_bounds(d, s.u32min, s.u32max)
    d.off = t_subreg(t_lshift(subreg, s.u32min))
    d.unbound64()
    d.update32()


def _lsh64(d: _R, s: Scalar) -> None:
    umin, umax = s.umin, s.umax
    if umin == 32 and umax == 32 and d.s32max >= 0:
        d.smax = d.s32max << 32
    else:
        d.smax = S64_MAX
    if umin == 32 and umax == 32 and d.s32min >= 0:
        d.smin = d.s32min << 32
    else:
        d.smin = S64_MIN
    if d.umax > 1 << (63 - umax):
        d.umin, d.umax = 0, U64
    else:
        d.umin = (d.umin << umin) & U64
        d.umax = (d.umax << umax) & U64
    _lsh32_bounds(d, umin, umax)
    d.off = t_lshift(d.off, umin)
    d.update()


def _rsh32(d: _R, s: Scalar) -> None:
    subreg = t_subreg(d.off)
    d.s32min, d.s32max = S32_MIN, S32_MAX
    d.off = t_rshift(subreg, s.u32min)
    d.u32min >>= s.u32max
    d.u32max >>= s.u32min
    d.unbound64()
    d.update32()


def _rsh64(d: _R, s: Scalar) -> None:
    d.smin, d.smax = S64_MIN, S64_MAX
    d.off = t_rshift(d.off, s.umin)
    d.umin >>= s.umax
    d.umax >>= s.umin
    d.unbound32()
    d.update()


def _arsh32(d: _R, s: Scalar) -> None:
    n = s.u32min
    d.s32min = s32((d.s32min >> n) & U32)
    d.s32max = s32((d.s32max >> n) & U32)
    d.off = t_arshift(t_subreg(d.off), n, 32)
    d.u32min, d.u32max = 0, U32
    d.unbound64()
    d.update32()


def _arsh64(d: _R, s: Scalar) -> None:
    n = s.umin
    d.smin >>= n
    d.smax >>= n
    d.off = t_arshift(d.off, n, 64)
    d.umin, d.umax = 0, U64
    d.unbound32()
    d.update()


# -- conditional jumps --------------------------------------------------------------------------
@_remembered
def branch_taken(s: Scalar, val: int, op: int, jmp32: bool, jeq_range: bool = False) -> bool | None:
    """is_branch_taken for a scalar against a constant (``val`` as the kernel passes it: a
    sign-extended immediate or the other register's value).  ``jeq_range``: JEQ/JNE also
    decided by the bounds (13fbcee55706, v6.2), not only by a constant tnum."""
    if jmp32:
        val &= U32
        v, m = t_subreg((s.value, s.mask))
        sval = s32(val)
        umin, umax, smin, smax = s.u32min, s.u32max, s.s32min, s.s32max
    else:
        val &= U64
        v, m = s.value, s.mask
        sval = s64(val)
        umin, umax, smin, smax = s.umin, s.umax, s.smin, s.smax
    if op in (JEQ, JNE):
        if m == 0:
            return (v == val) == (op == JEQ)
        if jeq_range and (val < umin or val > umax or sval < smin or sval > smax):
            return op == JNE
        return None
    if op == JSET:
        if v & val:
            return True
        if not (v | m) & val:
            return False
        return None
    return _ordered(op, (umin, umax, smin, smax), (val, val, sval, sval))


def _ordered(op: int, a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool | None:
    """An ordering jump (JGT ... JSLE) decided by the bounds (umin, umax, smin, smax) of each side."""
    umin1, umax1, smin1, smax1 = a
    umin2, umax2, smin2, smax2 = b
    tests = {
        JGT: (umin1 > umax2, umax1 <= umin2), JSGT: (smin1 > smax2, smax1 <= smin2),
        JLT: (umax1 < umin2, umin1 >= umax2), JSLT: (smax1 < smin2, smin1 >= smax2),
        JGE: (umin1 >= umax2, umax1 < umin2), JSGE: (smin1 >= smax2, smax1 < smin2),
        JLE: (umax1 <= umin2, umin1 > umax2), JSLE: (smax1 <= smin2, smin1 > smax2),
    }
    if op not in tests:
        return None
    yes, no = tests[op]
    if yes:
        return True
    if no:
        return False
    return None


@_remembered
def branch_taken_ranges(a: Scalar, b: Scalar, op: int, jmp32: bool, jeq_tnum: bool = False) -> bool | None:
    """is_scalar_branch_taken as generalised in v6.8 (profile field ``verifier_branch_ranges``):
    ``a op b`` for two scalars, constants or not, decided when their ranges cannot overlap in
    the way ``op`` needs; a 64-bit JEQ/JNE also by the 32-bit ranges.  JSET still needs one
    side constant.  Against a constant it answers as :func:`branch_taken` with ``jeq_range``
    does, plus the 32-bit ranges of a 64-bit JEQ/JNE.  ``jeq_tnum``: JEQ/JNE also decided when
    the tnums disagree on a bit both know (profile field ``verifier_jeq_tnum``)."""
    if jmp32:
        t1, t2 = t_subreg((a.value, a.mask)), t_subreg((b.value, b.mask))
        umin1, umax1, smin1, smax1 = a.u32min, a.u32max, a.s32min, a.s32max
        umin2, umax2, smin2, smax2 = b.u32min, b.u32max, b.s32min, b.s32max
    else:
        t1, t2 = (a.value, a.mask), (b.value, b.mask)
        umin1, umax1, smin1, smax1 = a.umin, a.umax, a.smin, a.smax
        umin2, umax2, smin2, smax2 = b.umin, b.umax, b.smin, b.smax
    if op in (JEQ, JNE):
        if t1[1] == 0 and t2[1] == 0:
            return (t1[0] == t2[0]) == (op == JEQ)
        apart = umin1 > umax2 or umax1 < umin2 or smin1 > smax2 or smax1 < smin2
        if not apart and not jmp32:
            apart = a.u32min > b.u32max or a.u32max < b.u32min or a.s32min > b.s32max or a.s32max < b.s32min
        if not apart and jeq_tnum:
            known = ~t1[1] & ~t2[1]
            apart = t1[0] & known != t2[0] & known
        return op == JNE if apart else None
    if op == JSET:
        if t2[1] != 0:
            t1, t2 = t2, t1
        if t2[1] != 0:
            return None
        if t1[0] & t2[0]:
            return True
        if not (t1[0] | t1[1]) & t2[0]:
            return False
        return None
    return _ordered(op, (umin1, umax1, smin1, smax1), (umin2, umax2, smin2, smax2))


FLIP = {JGT: JLT, JLT: JGT, JGE: JLE, JLE: JGE, JSGT: JSLT, JSLT: JSGT, JSGE: JSLE, JSLE: JSGE,
        JEQ: JEQ, JNE: JNE, JSET: JSET}


@_remembered
def set_min_max(s: Scalar, val: int, op: int, jmp32: bool) -> tuple[Scalar, Scalar]:
    """reg_set_min_max: (the register where ``s op val`` holds, where it does not)."""
    true_r, false_r = _R(s), _R(s)
    val64 = val & U64
    val32 = val & U32
    sval, sval32 = s64(val64), s32(val32)
    f32, f64 = t_subreg(false_r.off), false_r.off
    t32, t64 = t_subreg(true_r.off), true_r.off
    if op == JEQ:
        if jmp32:
            true_r.mark_known32(val32)
            t32 = t_subreg(true_r.off)
        else:
            true_r.mark_known(val64)
            t64 = true_r.off
    elif op == JNE:
        if jmp32:
            false_r.mark_known32(val32)
            f32 = t_subreg(false_r.off)
        else:
            false_r.mark_known(val64)
            f64 = false_r.off
    elif op == JSET:
        if jmp32:
            f32 = t_and(f32, (~val32 & U64, 0))
            if val32 and val32 & (val32 - 1) == 0:
                t32 = t_or(t32, (val32, 0))
        else:
            f64 = t_and(f64, (~val64 & U64, 0))
            if val64 and val64 & (val64 - 1) == 0:
                t64 = t_or(t64, (val64, 0))
    elif op in (JGE, JGT):
        if jmp32:
            false_r.u32max = min(false_r.u32max, val32 if op == JGT else (val32 - 1) & U32)
            true_r.u32min = max(true_r.u32min, (val32 + 1) & U32 if op == JGT else val32)
        else:
            false_r.umax = min(false_r.umax, val64 if op == JGT else (val64 - 1) & U64)
            true_r.umin = max(true_r.umin, (val64 + 1) & U64 if op == JGT else val64)
    elif op in (JSGE, JSGT):
        if jmp32:
            false_r.s32max = min(false_r.s32max, sval32 if op == JSGT else s32(sval32 - 1))
            true_r.s32min = max(true_r.s32min, s32(sval32 + 1) if op == JSGT else sval32)
        else:
            false_r.smax = min(false_r.smax, sval if op == JSGT else s64(sval - 1))
            true_r.smin = max(true_r.smin, s64(sval + 1) if op == JSGT else sval)
    elif op in (JLE, JLT):
        if jmp32:
            false_r.u32min = max(false_r.u32min, val32 if op == JLT else (val32 + 1) & U32)
            true_r.u32max = min(true_r.u32max, (val32 - 1) & U32 if op == JLT else val32)
        else:
            false_r.umin = max(false_r.umin, val64 if op == JLT else (val64 + 1) & U64)
            true_r.umax = min(true_r.umax, (val64 - 1) & U64 if op == JLT else val64)
    elif op in (JSLE, JSLT):
        if jmp32:
            false_r.s32min = max(false_r.s32min, sval32 if op == JSLT else s32(sval32 + 1))
            true_r.s32max = min(true_r.s32max, s32(sval32 - 1) if op == JSLT else sval32)
        else:
            false_r.smin = max(false_r.smin, sval if op == JSLT else s64(sval + 1))
            true_r.smax = min(true_r.smax, s64(sval - 1) if op == JSLT else sval)
    else:
        return s, s
    for r, o32, o64 in ((false_r, f32, f64), (true_r, t32, t64)):
        if jmp32:
            r.off = t_or(t_clear_subreg(o64), t_subreg(o32))
            r.combine_32_into_64()
        else:
            r.off = o64
            r.combine_64_into_32()
    return true_r.freeze(), false_r.freeze()


# rev_opcode: the condition of the fall-through.  JSET has no opcode for "no bit of val set":
# the kernel marks it BPF_JSET | BPF_X, and so does this table.
JSET_NONE = JSET | 0x08
REVERSE = {JEQ: JNE, JNE: JEQ, JSET: JSET_NONE, JSET_NONE: JSET, JGE: JLT, JGT: JLE, JLE: JGT, JLT: JGE,
           JSGE: JSLT, JSGT: JSLE, JSLE: JSGT, JSLT: JSGE}


def _const_of(r: _R, jmp32: bool) -> int | None:
    """is_reg_const / reg_const_value."""
    if jmp32:
        return r.value & U32 if r.mask & U32 == 0 else None
    return r.value if r.mask == 0 else None


def _with_subreg(t: tuple[int, int], sub: tuple[int, int]) -> tuple[int, int]:
    """tnum_with_subreg."""
    return t_or(t_clear_subreg(t), t_subreg(sub))


def _refine(r1: _R, r2: _R, op: int, jmp32: bool) -> None:
    """regs_refine_cond_op (v6.8): what ``r1 op r2`` holding tells of both registers."""
    if op in (JGE, JGT, JSGE, JSGT):        # as LE/LT/SLE/SLT with the registers swapped
        op, r1, r2 = FLIP[op], r2, r1
    if op == JEQ:
        if jmp32:
            r1.u32min = r2.u32min = max(r1.u32min, r2.u32min)
            r1.u32max = r2.u32max = min(r1.u32max, r2.u32max)
            r1.s32min = r2.s32min = max(r1.s32min, r2.s32min)
            r1.s32max = r2.s32max = min(r1.s32max, r2.s32max)
            t = t_intersect(t_subreg(r1.off), t_subreg(r2.off))
            r1.off, r2.off = _with_subreg(r1.off, t), _with_subreg(r2.off, t)
        else:
            r1.umin = r2.umin = max(r1.umin, r2.umin)
            r1.umax = r2.umax = min(r1.umax, r2.umax)
            r1.smin = r2.smin = max(r1.smin, r2.smin)
            r1.smax = r2.smax = min(r1.smax, r2.smax)
            r1.off = r2.off = t_intersect(r1.off, r2.off)
        return
    if op in (JNE, JSET, JSET_NONE):        # these need a constant, in r2
        if _const_of(r2, jmp32) is None:
            r1, r2 = r2, r1
        val = _const_of(r2, jmp32)
        if val is None:
            return
        if op == JNE:                       # a constant at the edge of r1's range moves the edge
            if jmp32:
                sval = s32(val)
                r1.u32min += r1.u32min == val
                r1.u32max -= r1.u32max == val
                r1.s32min += r1.s32min == sval
                r1.s32max -= r1.s32max == sval
            else:
                sval = s64(val)
                r1.umin += r1.umin == val
                r1.umax -= r1.umax == val
                r1.smin += r1.smin == sval
                r1.smax -= r1.smax == sval
        elif op == JSET:                    # a set bit is learnt only when val has one bit
            if val and val & (val - 1) == 0:
                r1.off = _with_subreg(r1.off, t_or(t_subreg(r1.off), (val, 0))) if jmp32 else t_or(r1.off, (val, 0))
        else:
            t = t_and(t_subreg(r1.off) if jmp32 else r1.off, (~val & U64, 0))
            r1.off = _with_subreg(r1.off, t) if jmp32 else t
        return
    strict = op in (JLT, JSLT)              # r1 < r2: r1 below r2's max, r2 above r1's min
    if op in (JLE, JLT):
        if jmp32:
            r1.u32max = min(r1.u32max, (r2.u32max - strict) & U32)
            r2.u32min = max((r1.u32min + strict) & U32, r2.u32min)
        else:
            r1.umax = min(r1.umax, (r2.umax - strict) & U64)
            r2.umin = max((r1.umin + strict) & U64, r2.umin)
    elif op in (JSLE, JSLT):
        if jmp32:
            r1.s32max = min(r1.s32max, s32((r2.s32max - strict) & U32))
            r2.s32min = max(s32((r1.s32min + strict) & U32), r2.s32min)
        else:
            r1.smax = min(r1.smax, s64((r2.smax - strict) & U64))
            r2.smin = max(s64((r1.smin + strict) & U64), r2.smin)


@_remembered
def set_min_max_ranges(a: Scalar, b: Scalar, op: int, jmp32: bool,
                       same: bool = False) -> tuple[Scalar, Scalar, Scalar, Scalar]:
    """reg_set_min_max as generalised in v6.8 (profile field ``verifier_branch_ranges``): both
    registers of ``a op b`` (``b`` a constant for an immediate) refined from each other, where
    the jump is taken and where it falls through, each then reg_bounds_sync'ed.  Returns
    (a taken, b taken, a fall-through, b fall-through).  ``same``: one register on both sides
    (`if r1 < r1`), refined in place twice as the kernel's two pointers to it do."""
    out = []
    for cond in (op, REVERSE[op]):
        r1 = _R(a)
        r2 = r1 if same else _R(b)
        _refine(r1, r2, cond, jmp32)
        r1.sync_v6_8()
        r2.sync_v6_8()
        out += [r1.freeze(), r2.freeze()]
    return out[0], out[1], out[2], out[3]


@_remembered
def combine_equal(a: Scalar, b: Scalar) -> Scalar:
    """__reg_combine_min_max: both registers of a 64-bit ``==`` that holds."""
    r = _R(a)
    r.umin, r.umax = max(a.umin, b.umin), min(a.umax, b.umax)
    r.smin, r.smax = max(a.smin, b.smin), min(a.smax, b.smax)
    r.off = t_intersect((a.value, a.mask), (b.value, b.mask))
    r.sync()
    return r.freeze()
