"""Kernel profiles: everything that differs between the kernel versions we model.

A profile is data.  Engines read the fields they need; no module compares a
profile's *name*.  Sources: ``../shared/reference/README.md`` (history of
MAX_TAIL_CALL_CNT), the seed commit's bpftool listings (linux-5.5) and the
images captured from Debian's 6.1 kernel (linux-6.1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True, slots=True)
class KernelBug:
    """A real divergence of a profile's kernel, and the profile change its fix made.

    A profile models its kernel *with* its bugs; a fuzzer that rediscovers one
    is working.  The oracle re-runs a diverging scenario on the profile with
    the fix applied (``get_profile("linux-5.5+a657182a5c51")``): a divergence
    the fix removes is reported as this known bug, not as a new one.

    ``reference_as_bug`` makes the reference interpreter run as the buggy kernel
    does (profile field -> value), when it can: a new bug that shows only
    together with this one (a tail-call limit off by one in a hierarchy whose
    counter this bug copies) is named by its own what-if model on top of it.
    """

    commit: str                           # the fixing commit (12 hex digits)
    title: str
    introduced: str                       # commit and release that brought it in
    fixed_in: str
    fix: tuple[tuple[str, object], ...]   # Profile field -> value after the fix
    reference_as_bug: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class XdpLayout:
    """The kernel structures an XDP program's context accesses become (``xdp_convert_ctx_access``).

    ``struct xdp_md`` is uapi; the verifier rewrites each field load into loads
    from ``struct xdp_buff`` (``include/net/xdp.h``), ``struct xdp_rxq_info``
    and ``struct net_device`` (``include/linux/netdevice.h``), whose offsets
    are this kernel's (x86-64).
    """

    xdp_md_size: int            # sizeof(struct xdp_md): 24 with egress_ifindex (v5.8+), 20 before
    off_buff_data: int          # offsetof(struct xdp_buff, data)
    off_buff_data_end: int
    off_buff_data_meta: int
    off_buff_data_hard_start: int
    off_buff_rxq: int
    off_buff_txq: int | None    # None: no txq member (before v5.8)
    off_rxq_dev: int            # offsetof(struct xdp_rxq_info, dev)
    off_rxq_queue_index: int
    off_txq_dev: int            # offsetof(struct xdp_txq_info, dev)
    off_netdev_ifindex: int     # offsetof(struct net_device, ifindex)


# v6.1 (include/net/xdp.h: data, data_end, data_meta, data_hard_start, rxq,
# txq, frame_sz, flags; include/linux/netdevice.h: name[16], name_node,
# ifalias, mem_end, mem_start, base_addr, state, six list_heads, adj_list,
# flags, priv_flags (u64), netdev_ops, ifindex -- the "read-mostly" group
# that v6.3 changed by inserting xdp_features).
XDP_LAYOUT_6_1 = XdpLayout(xdp_md_size=24, off_buff_data=0x00, off_buff_data_end=0x08, off_buff_data_meta=0x10,
                           off_buff_data_hard_start=0x18, off_buff_rxq=0x20, off_buff_txq=0x28,
                           off_rxq_dev=0x00, off_rxq_queue_index=0x08, off_txq_dev=0x00, off_netdev_ifindex=0xD8)
# v5.5: xdp_buff still has `unsigned long handle` before rxq and no txq; xdp_md
# has no egress_ifindex; net_device's ifindex follows `int irq`, state, the
# list heads, adj_list and seven netdev_features_t (the v5.10 layout too).
XDP_LAYOUT_5_5 = XdpLayout(xdp_md_size=20, off_buff_data=0x00, off_buff_data_end=0x08, off_buff_data_meta=0x10,
                           off_buff_data_hard_start=0x18, off_buff_rxq=0x28, off_buff_txq=None,
                           off_rxq_dev=0x00, off_rxq_queue_index=0x08, off_txq_dev=0x00, off_netdev_ifindex=0x100)

# v5.10: xdp_buff and xdp_md as in 6.1 (txq since 5.8, no `handle`), net_device's
# ifindex where 5.5 has it (include/net/xdp.h, include/linux/netdevice.h of v5.10)
XDP_LAYOUT_5_10 = replace(XDP_LAYOUT_6_1, off_netdev_ifindex=XDP_LAYOUT_5_5.off_netdev_ifindex)


# v6.12 (Debian's 6.12.117): net_device's ifindex moved with the v6.8 reorganisation into
# cache-line groups; read from the real kernel's xlated program (`r = *(u32 *)(r +224)`).
XDP_LAYOUT_6_12 = replace(XDP_LAYOUT_6_1, off_netdev_ifindex=0xE0)


@dataclass(frozen=True, slots=True)
class PerCpuInline:
    """``bpf_get_smp_processor_id`` inlined by the verifier (do_misc_fixups, v6.10, x86-64 with a JIT).

    The call becomes ``w0 = (u32)&pcpu_hot.cpu_number; r0 = &(void __percpu *)(r0);
    w0 = *(u32 *)(r0 +0)``, and the x86 JIT turns the per-CPU move into ``add
    %gs:this_cpu_off,%rax``.  Both addresses are this build's per-CPU symbols (offsets
    into the per-CPU area), read from the real kernel's xlated program and image and
    equal to its ``/proc/kallsyms`` (``pcpu_hot`` + 0xc, ``this_cpu_off``).
    """

    cpu_number: int        # (u32)&pcpu_hot.cpu_number
    this_cpu_off: int      # &this_cpu_off: the per-CPU variable holding the CPU's per-CPU base


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str

    # -- tail-call counter ----------------------------------------------------
    max_tail_call_cnt: int
    # The interpreter's test before counting: "gt" leaves when cnt > MAX
    # (v5.5: ``if (tail_call_cnt > MAX_TAIL_CALL_CNT) goto out``), "ge" when
    # cnt >= MAX (v5.17+).  Both profiles allow exactly 33 tail calls.
    interp_limit_test: str
    # Can a program mix bpf-to-bpf calls and tail calls?  (v5.5: the verifier
    # refuses; v5.10+: yes, on x86-64 JIT.)
    tail_calls_in_subprogs: bool
    # The *interpreter's* counter across bpf-to-bpf calls.  "shared" is the
    # specification -- one counter per run, at most 33 tail calls in total
    # whatever the call hierarchy -- and every profile uses it (the kernel's
    # own interpreter refuses programs that mix calls and tail calls, so it
    # cannot be asked).  "copy" (the caller's count by value, the callee's
    # increments lost on return) and "reset" (every callee starts at zero) are
    # what-if models for the oracle's signature probes only.  How a profile's
    # JIT carries the counter is ``jit_tail_call_cnt``.
    subprog_counter: str

    # -- x86-64 JIT -------------------------------------------------------------
    jit_prologue: str                 # JIT flavour (jit/bpf_jit_comp.py FLAVOURS): v5.5, v5.10, v6.1, v6.12
    jit_tail_call_jcc: str            # "ja" (v5.5: cmp $32; ja) or "jae" (v6.1: cmp $33; jae)
    x86_tail_call_offset: int         # bytes of the target's prologue a tail call skips
    jit_sls: bool                     # CONFIG_SLS: int3 after every ret
    retpoline: bool                   # indirect jumps through a retpoline thunk
    # struct offsets the generated code reads (include/linux/bpf.h)
    off_array_max_entries: int        # offsetof(struct bpf_array, map.max_entries)
    off_array_ptrs: int               # offsetof(struct bpf_array, ptrs)
    off_prog_bpf_func: int            # offsetof(struct bpf_prog, bpf_func)
    # offsetof(struct htab_elem, key) (kernel/bpf/hashtab.c): 0x30 on x86-64 in 5.5 and 6.1
    # (hash_node/padding 16, lru_node 24, hash 4, key aligned to 8); the inlined hash lookup
    # adds it and round_up(key_size, 8) to the element (6.1's image: add $0x38,%rax).
    off_htab_elem_key: int = 0x30
    # Longest forward displacement a BPF jump gets the short (imm8) form for: 127, or
    # 123 with the pass-loop convergence fix (``is_imm8_jmp_offset``; Debian's 6.1.192
    # has the 6.1.y backport: its images use the 32-bit form from +124 on).
    jit_imm8_jmp_max: int = 127
    # How the JIT hands the tail-call counter to a subprogram (v5.10+ flavours):
    # "value" -- the count itself in rax, pushed below the frame; a subprogram's
    # tail calls do not count for its caller (5.10 to 6.9: the bug that
    # 116e04ba1459 fixed); "pointer" -- ``tail_call_cnt_ptr``, a pointer to the
    # one counter in the main program's frame (v6.10+), incremented only when
    # the slot holds a program.
    jit_tail_call_cnt: str = "value"
    # CONFIG_X86_KERNEL_IBT: ``endbr64`` first and after ``mov rbp,rsp``
    jit_ibt: bool = False
    # The 5-byte nop of the prologue and of empty direct tail-call sites
    # (5.10's ideal_nops[NOP_ATOMIC5] on the fixtures' CPU; x86_nops[5] since 5.15)
    jit_nop5: bytes = bytes.fromhex("0f1f440000")
    # Does a tail call through an empty slot use up one of the 33 in the
    # *interpreter*?  The kernel's interpreter (core.c: ``tail_call_cnt++`` before
    # ``if (!prog)``): yes, until 3733f4be2870 (2026).  (The JIT's answer follows
    # from ``jit_tail_call_cnt``: "value" counts the attempt, "pointer" -- v6.10+ --
    # only a call that finds a program.)
    tail_call_counts_empty_slot: bool = True
    # -- verifier (jit/xlate.py) ----------------------------------------------------
    # When is a constant tail-call key "in range" for a direct site (record_func_key)?
    # "exact": key < max_entries (a657182a5c51, v6.0-rc4); "tnum": tnum_in(tnum_range(0,
    # max_entries - 1), key), which until then also let keys up to the next power of two
    # minus one through (the site is then direct, its slot can never be filled).
    verifier_tail_call_key_range: str = "exact"
    # The range a packet pointer gets from `if (rP + N >= data_end)` (and the
    # other "right open" comparisons, find_good_pkt_pointers): N + 1 since
    # 2fa7d94afc1a "bpf: Fix the off-by-two error in range markings" (v5.16),
    # N - 1 before.  `>`-style comparisons give N on every version.
    verifier_pkt_range_open_adjust: int = 1
    # is_branch_taken decides JEQ/JNE against a constant outside the register's bounds,
    # not only against a constant register: 13fbcee55706 (v6.2).
    verifier_jeq_range: bool = False
    # is_branch_taken compares two scalars by their ranges, neither needing to be a constant, and
    # a 64-bit JEQ/JNE also by the 32-bit ranges (Andrii Nakryiko's range-vs-range series, v6.8);
    # the same series makes reg_set_min_max refine both registers (regs_refine_cond_op) and
    # reg_bounds_sync relate the 32-bit and 64-bit bounds (scalar._R.sync_v6_8, also after ALU ops).
    # Measured on 6.12.117: r8 = -1 (a constant) and r4 a u16 load xor'd with small constants:
    # `if r8 != r4` is decided taken and its fall-through removed.  Before, a register comparison
    # is decided only when the source register is a constant.
    verifier_branch_ranges: bool = False
    # With verifier_branch_ranges: JEQ/JNE also decided when the two tnums disagree on a bit
    # both know (tnum_overlap; upstream in v6.18, in the 6.12.y stable builds).  Measured on
    # 6.12.117: `r0 = bpf_get_prandom_u32(); r0 &= -2; if r0 != 0x3f` is decided taken, 32-bit
    # and 64-bit alike (the ranges overlap, the low bit cannot); 6.1.192 keeps the branch.
    verifier_jeq_tnum: bool = False
    # A BPF_ST of a non-zero immediate into an 8-aligned stack slot is remembered as a
    # spilled constant, the immediate sign-extended (ecdf985d7615, v6.3, and in the stable
    # builds: measured on 6.1.192 and 5.10.223 -- `*(u64 *)(r10 -8) = -9` then a fill and
    # `if r5 == 0xfffffff7` is hard-wired not taken); before, the slot is only "misc" data.
    # The same change makes a BPF_ST of 0 write zero bytes (STACK_ZERO), read back as the
    # constant 0 (measured on 6.1.192: `stw [fp-476], 0` then `ldxb [fp-473]` as a tail-call
    # key gives a direct site).
    verifier_st_imm_spill: bool = True
    # Registers spilled with a store narrower than 8 bytes (to an 8-aligned slot) keep their
    # value for a fill of the same size (354e8f1970f8, v5.16; 5.10.223 has it too, measured).
    verifier_narrow_spill: bool = True
    # A fill narrower than the spilled scalar, at the spill's first byte (little-endian:
    # bpf_stack_narrow_access_ok), keeps the scalar cut to the fill's size (v6.8, "preserve
    # boundaries and track scalars on narrowing fill").  Before, only a fill of the spill's own
    # size keeps it.  Measured on 6.12.117: after `*(u64 *)(r10 -32) = r5` with r5 = 0x100000000,
    # an atomic fetch of the u32 at fp-32 returns the constant 0, and the branches on it are
    # decided (and their dead code removed) -- on 6.1.192 they stay.  The same release keeps
    # zero bytes beside a narrow spill: a read of only those is the constant 0 ("preserve
    # STACK_ZERO slots on partial reg spills"; measured on 6.12.117: two `stw` of K and 0 at
    # fp-480/-476, then `ldxb [fp-473]` as a tail-call key gives a direct site).
    verifier_narrow_fill: bool = False
    # adjust_scalar_min_max_vals asks is_safe_to_compute_dst_reg_range first (v6.10): XOR, OR and
    # MUL compute bounds with a non-constant source too, and a shift by the width or more, a div
    # or a mod leave the whole register unknown, not zero-extended after a 32-bit op.  Measured on
    # 6.12.117: `r5 *= r5` with r5's low 21 bits known zero, then `r5 ^= r5`, leaves w5 = 0 and
    # decides `if w5 <= K`; 6.1.192 keeps the branch (MUL by a non-constant: unknown).
    verifier_safe_dst_range: bool = False
    # A helper that only reads stack memory (a map key or value) still turns the spilled
    # registers and zero bytes it covers into misc data (check_stack_boundary /
    # check_stack_range_initialized): measured on 5.10.223, 6.1.192 and 6.12.117 -- a 4-byte spill of 1
    # passed as a lookup key and filled after the call is unknown (`if w0 == 0x1` stays).
    verifier_helper_stack_clobber: bool = True
    # The verifier takes a subprogram's R0 from its own exit even when the subprogram can
    # tail-call, whose success returns the target's R0 instead (SUBPROG_R0_ACROSS_TAIL_CALL).
    verifier_trusts_subprog_r0: bool = True
    # XDP context rewrite (convert_ctx_accesses) and the structures behind it.
    xdp: XdpLayout = XDP_LAYOUT_6_1
    # -- instruction set the verifier accepts (bpfdiff/verifier.py) -------------------
    # ISA v4 (v6.6): movsx, sign-extending loads, sdiv/smod, 64-bit bswap, ja32/gotol.
    # Without it the kernel refuses them: "BPF_MOV uses reserved fields", "BPF_LDX uses
    # reserved fields", "BPF_ALU uses reserved fields", "unknown opcode d7" / "06".
    isa_v4: bool = False
    # `gotol` (BPF_JMP32 | BPF_JA, a 32-bit jump offset in imm) alone of ISA v4: Debian's
    # 6.1.192 loads and JITs it (measured: conformance ja32.data, `jmp` to the target), while
    # its movsx, sdiv, bswap64 and sign-extending loads are refused; 5.10.223 refuses it.
    isa_ja32: bool = False
    # BPF_ATOMIC beyond the plain add (or/and/xor, BPF_FETCH, xchg, cmpxchg): v5.12.
    # Before, BPF_XADD with imm 0 was the only atomic ("BPF_XADD uses reserved fields").
    atomic_fetch: bool = True
    # Width of what the map-type functions return that the verifier calls directly in a JITed
    # program (patch_map_ops_generic: htab_map_delete_elem, array_map_update_elem...): 32 while
    # struct bpf_map_ops declared them `int` -- the compiled function leaves the error in eax, so
    # R0 = 0x00000000fffffffe for -ENOENT, where the helper (the interpreter's path) sign-extends;
    # 64 since d7ba4cc900bf made them `long` (v6.4).  Measured on the real 6.1 JIT.
    map_ops_return_bits: int = 32
    # bpf_get_smp_processor_id inlined (see PerCpuInline); None: called (before v6.10).
    inline_smp_processor_id: PerCpuInline | None = None
    # Does the verifier bound bpf_get_smp_processor_id's result to [0, nr_cpu_ids - 1]
    # (do_refine_retval_range)?  With one CPU R0 is then the constant 0, so `r3 = cpu & 1` is a
    # constant tail-call key (a direct site).  Measured: direct on 6.12.117, indirect on 6.1.192
    # and 5.10.223 (whose do_refine_retval_range bounds only the string and stack helpers).
    verifier_cpu_id_range: bool = False
    # Does a tail call forget the packet pointers of *every* frame, so that they are gone in the
    # caller after a call of a subprogram that reaches a tail call (clear_all_pkt_pointers after
    # bpf_helper_changes_pkt_data(tail_call), 1a4607ffba35, v6.13)?  Measured: refused on
    # 6.12.117 ("R7 invalid mem access 'scalar'"), accepted on 6.1.192 and 5.10.223.
    verifier_tail_call_forgets_pkt: bool = False
    # ``lddw`` of a constant that sign-extends from 32 bits: ``mov $imm32,%r64`` (REX.W C7, 7 bytes)
    # instead of ``movabs`` (emit_mov_imm64's is_simm32 case; measured on 6.12.117, not in 6.1.192).
    jit_imm64_simm32: bool = False
    # Real divergences of this kernel (see KernelBug), oldest first.
    kernel_bugs: tuple[KernelBug, ...] = ()

    @property
    def allowed_tail_calls(self) -> int:
        """How many tail calls one run may take (33 on every modelled kernel)."""
        return self.max_tail_call_cnt + (1 if self.interp_limit_test == "gt" else 0)

    def allows_tail_call(self, count: int) -> bool:
        """The interpreter's limit test: may a tail call be taken after ``count`` of them?"""
        if self.interp_limit_test == "gt":
            return not count > self.max_tail_call_cnt
        return not count >= self.max_tail_call_cnt

    def with_options(self, **changes: object) -> Profile:
        return replace(self, **changes)


MAP_OPS_RETURN_INT = KernelBug(
    commit="d7ba4cc900bf",
    title="bpf: return long from bpf_map_ops funcs",
    introduced="bdb7b79b4ce8 (v5.9-rc1, helpers return long) over 09772d92cd5a (v5.0, direct map-ops "
               "calls in JITed programs)",
    fixed_in="v6.4",
    fix=(("map_ops_return_bits", 64),),
)

# Found by bpfdiff's own clean campaigns (6.1, 5.10, 6.12) and confirmed on the real 6.1.192 and
# 5.10.223 with kernel-jit; no upstream fix was found, so it is named by what it is, not a commit.
SUBPROG_R0_ACROSS_TAIL_CALL = KernelBug(
    commit="subprog-r0-tail-call",
    title="verifier: a subprogram's R0 is taken from its own exit across a successful tail call "
          "(branches on it hard-wired, code removed as dead)",
    introduced="e411901c0b77 (v5.10-rc1, tail calls in subprograms)",
    fixed_in="not fixed upstream as far as we know",
    fix=(("verifier_trusts_subprog_r0", False),),
)

LINUX_5_5 = Profile(
    name="linux-5.5",
    description="seed era (v5.5, direct tail calls introduced): MAX_TAIL_CALL_CNT 32, "
    "interpreter 'cnt > MAX', JIT 'cmp $32; ja', counter at rbp-0x224",
    max_tail_call_cnt=32,
    interp_limit_test="gt",
    tail_calls_in_subprogs=False,
    subprog_counter="shared",
    jit_prologue="v5.5",
    jit_tail_call_jcc="ja",
    x86_tail_call_offset=0x19,   # PROLOGUE_SIZE: the seed listing's `add $0x19,%rax`
    jit_sls=False,
    retpoline=True,
    off_array_max_entries=0x24,  # the seed listing: cmp %edx,0x24(%rsi)
    off_array_ptrs=0xD0,         # mov 0xd0(%rsi,%rdx,8),%rax
    off_prog_bpf_func=0x30,      # mov 0x30(%rax),%rax
    atomic_fetch=False,
    # The 5.5 verifier's range test for a constant tail-call key let keys up to
    # the next power of two minus one through: such a site is direct, counts a
    # tail call before its nop falls through (and the load-time fixup reads
    # ptrs[] out of bounds), while the interpreter's bounds check leaves
    # without counting -- a genuine JIT/interpreter divergence of this kernel.
    verifier_tail_call_key_range="tnum",
    verifier_pkt_range_open_adjust=-1,
    verifier_narrow_spill=False,    # v5.16
    verifier_st_imm_spill=False,    # v6.3
    xdp=XDP_LAYOUT_5_5,
    kernel_bugs=(
        KernelBug(
            commit="a657182a5c51",
            title="bpf: Don't use tnum_range on array range checking for poke descriptors",
            introduced="d2e4c1e6c294 (v5.5-rc1, constant map key tracking for prog array pokes)",
            fixed_in="v6.0-rc4",
            fix=(("verifier_tail_call_key_range", "exact"),),
        ),
        MAP_OPS_RETURN_INT,
    ),
)

# 116e04ba1459 "bpf, x64: Fix tailcall hierarchy" (v6.10): the x86 JIT passed
# the counter to subprograms by value (rax), so tail calls made in a
# subprogram did not count for its caller, and a program calling such a
# subprogram twice ran past MAX_TAIL_CALL_CNT (66 chain entries instead of 33
# on the real 5.10.223 and 6.1.192, ../shared/reference/real-kernels.md).  The
# fix passes a pointer to one counter (tail_call_cnt_ptr), with `xor rax,rax`
# / nop3 in the prologue (X86_TAIL_CALL_OFFSET one longer) and the increment
# moved after the NULL check: a call through an empty slot no longer counts,
# and the fixed variant's interpreter follows so that the two compare on the
# hierarchy alone.
TAILCALL_HIERARCHY = KernelBug(
    commit="116e04ba1459",
    title="bpf, x64: Fix tailcall hierarchy",
    introduced="e411901c0b77 (v5.10-rc1, tail calls in BPF subprograms for x64 JIT) and "
               "ebf7d1f508a7 (v5.10-rc1, pro/epilogue and tail-call handling rework)",
    fixed_in="v6.10",
    fix=(("jit_tail_call_cnt", "pointer"), ("x86_tail_call_offset", 12),
         ("tail_call_counts_empty_slot", False)),
    # the count passed by value: each subprogram starts from its caller's count and its
    # increments are lost on return (interp/vm.py's "copy" counter)
    reference_as_bug=(("subprog_counter", "copy"),),
)

LINUX_6_1 = Profile(
    name="linux-6.1",
    description="Debian bookworm 6.1: MAX_TAIL_CALL_CNT 33 tested with >= (jae), "
    "counter in rax and pushed below the frame, bypass + target poke sites",
    max_tail_call_cnt=33,
    interp_limit_test="ge",
    tail_calls_in_subprogs=True,
    subprog_counter="shared",
    jit_prologue="v6.1",
    jit_tail_call_jcc="jae",
    x86_tail_call_offset=11,     # X86_TAIL_CALL_OFFSET: nop5 + xor/nop2 + push rbp + mov rbp,rsp
    jit_sls=True,
    retpoline=True,
    off_array_max_entries=0x24,
    off_array_ptrs=0x110,
    off_prog_bpf_func=0x30,
    jit_imm8_jmp_max=123,
    kernel_bugs=(MAP_OPS_RETURN_INT, TAILCALL_HIERARCHY, SUBPROG_R0_ACROSS_TAIL_CALL),
    isa_ja32=True,               # gotol only (measured on 6.1.192)
)

# 3733f4be2870 "bpf: Do not increment tailcall count when prog is NULL" (2026):
# since 116e04ba1459 (v6.10) the x86 JIT counts a tail call only when the slot
# holds a program, while the interpreter still counted the attempt, so a run
# whose tail calls go through empty slots stops earlier interpreted than
# JITed.  Measured on Debian's 6.12.117 (a self loop that first tries an empty
# slot): 17 entries interpreted, 34 JITed.
INTERP_EMPTY_SLOT_COUNT = KernelBug(
    commit="3733f4be2870",
    title="bpf: Do not increment tailcall count when prog is NULL",
    introduced="04fd61ab36ec (v4.2, the interpreter's tail calls); diverging from the x86 JIT since "
               "116e04ba1459 (v6.10)",
    fixed_in="bpf-next, Feb 2026 (AUTOSEL for the stable trees in April 2026)",
    fix=(("tail_call_counts_empty_slot", False),),
)

LINUX_6_12 = Profile(
    name="linux-6.12",
    description="Debian trixie 6.12.117: IBT (endbr64), tail_call_cnt_ptr shared through "
    "subprograms (116e04ba1459), MAX_TAIL_CALL_CNT 33 tested with >=, tail calls enter at +0x10",
    max_tail_call_cnt=33,
    interp_limit_test="ge",
    tail_calls_in_subprogs=True,
    subprog_counter="shared",
    jit_prologue="v6.12",
    jit_tail_call_jcc="jae",
    # X86_TAIL_CALL_OFFSET = 12 + ENDBR_INSN_SIZE: endbr64 + nop5 + xor rax,rax/nop3 + push rbp + mov rbp,rsp
    x86_tail_call_offset=0x10,
    jit_sls=True,
    retpoline=True,
    off_array_max_entries=0x24,
    # struct bpf_map is no longer cache-line aligned (v6.x): value[]/ptrs[] at 0x108, read from the
    # real image (`add $0x108,%rdi` in the inlined array lookup, `mov 0x108(%rsi,%rdx,8),%rcx`)
    off_array_ptrs=0x108,
    off_prog_bpf_func=0x30,
    jit_tail_call_cnt="pointer",
    jit_ibt=True,
    map_ops_return_bits=64,      # d7ba4cc900bf (v6.4)
    kernel_bugs=(INTERP_EMPTY_SLOT_COUNT, SUBPROG_R0_ACROSS_TAIL_CALL),
    jit_imm8_jmp_max=123,        # the convergence fix (v6.13) is in 6.12.y well before .117
    isa_v4=True,                 # v6.6
    verifier_jeq_range=True,     # v6.2
    xdp=XDP_LAYOUT_6_12,
    # 6.12.117's /proc/kallsyms: pcpu_hot at 0x351c0 (cpu_number at +0xc), this_cpu_off at 0x19a18
    inline_smp_processor_id=PerCpuInline(cpu_number=0x351CC, this_cpu_off=0x19A18),
    verifier_cpu_id_range=True,
    verifier_tail_call_forgets_pkt=True,
    verifier_narrow_fill=True,       # v6.8
    verifier_branch_ranges=True,     # v6.8
    verifier_jeq_tnum=True,          # v6.18, backported
    verifier_safe_dst_range=True,    # v6.10
    jit_imm64_simm32=True,
)

LINUX_5_10 = Profile(
    name="linux-5.10",
    description="Debian bullseye 5.10.223: MAX_TAIL_CALL_CNT 32 tested with > (ja), counter by "
    "value in rax (no hierarchy fix), ff672c67ee76 carried, k8 nop5, no SLS, tail calls enter at +0xb",
    max_tail_call_cnt=32,
    interp_limit_test="gt",
    tail_calls_in_subprogs=True,
    subprog_counter="shared",
    jit_prologue="v5.10",
    jit_tail_call_jcc="ja",
    x86_tail_call_offset=11,
    jit_sls=False,
    retpoline=True,
    off_array_max_entries=0x24,
    off_array_ptrs=0x110,
    off_prog_bpf_func=0x30,
    jit_nop5=bytes.fromhex("6666666690"),
    atomic_fetch=False,          # BPF_ATOMIC fetch/xchg/cmpxchg/and/or/xor came in 5.12
    xdp=XDP_LAYOUT_5_10,
    # jit_imm8_jmp_max stays 127: the convergence fix (Dec 2024) is later than 5.10.223 (July 2024)
    kernel_bugs=(MAP_OPS_RETURN_INT, TAILCALL_HIERARCHY, SUBPROG_R0_ACROSS_TAIL_CALL),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LINUX_6_1, LINUX_5_5, LINUX_5_10, LINUX_6_12)}
DEFAULT_PROFILE = LINUX_6_1.name


def get_profile(name: str | Profile) -> Profile:
    """A profile by name; ``BASE+COMMIT[+COMMIT...]`` is BASE with those known kernel bugs fixed.

    A :class:`Profile` is returned as it is (a what-if variant, for instance).
    """
    if isinstance(name, Profile):
        return name
    base_name, *fixes = name.split("+")
    try:
        profile = PROFILES[base_name]
    except KeyError:
        raise ValueError(f"unknown profile {base_name!r} (known: {', '.join(PROFILES)})") from None
    bugs = {bug.commit: bug for bug in profile.kernel_bugs}
    for commit in fixes:
        if commit not in bugs:
            raise ValueError(f"profile {base_name} has no known kernel bug {commit!r} "
                             f"(known: {', '.join(bugs) or 'none'})")
        profile = profile.with_options(**dict(bugs[commit].fix))
    return profile.with_options(name=name) if fixes else profile


def unfixed_kernel_bugs(profile: Profile) -> tuple[KernelBug, ...]:
    """The profile's known kernel bugs whose fix it does not carry (all of them but those a
    ``BASE+COMMIT`` name fixed)."""
    return tuple(bug for bug in profile.kernel_bugs
                 if any(getattr(profile, field) != value for field, value in bug.fix))


def with_kernel_bug_fixed(profile: str, commit: str) -> str:
    """The name of ``profile`` with one more known kernel bug fixed."""
    return f"{profile}+{commit}"


def profile_key(profile: Profile, ignored: frozenset[str]) -> tuple:
    """The profile's values of every field but ``ignored``, in field order: all that a part of
    bpfdiff which never reads ``ignored`` can tell of the profile (a cache key)."""
    return tuple(getattr(profile, name) for name in _fields_but(ignored))


@functools.cache
def _fields_but(ignored: frozenset[str]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(Profile) if f.name not in ignored)
