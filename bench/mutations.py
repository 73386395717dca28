"""Mutation benchmark: does a clean campaign find small realistic bugs that nobody planted?

    .venv/bin/python bench/mutations.py [--scenarios 3000] [--profiles linux-6.1,linux-6.12] [--seed 0]
                                        [--engines interp,jit] [--jobs N] [--only NAME[,NAME]] [--list]
                                        [--no-baseline] [--time-limit S] [--kernel-shared]

Each mutation is a one-line-ish change in the style of a real kernel fix --
a wrong condition code in one jump width, a missing zero-extension, a fetch
atomic with R0 as source, the tail-call counter offset of ff672c67ee76, a poke
that skips subprograms, a translation cache not flushed, a shift count masked
to the wrong width, an array bound ``>`` for ``>=`` ... -- written as (file,
exact original snippet, replacement).  None of them is a planted bug
(``bpfdiff/bugs.py``): the fuzzer was not told about any of them.

For every mutation the benchmark

1. checks that every snippet still occurs exactly once in the sources (code
   moved: it stops with one line per stale snippet, exit 2);
2. copies the sources to a temporary directory laid out as the installed
   package (``bpfdiff/``, ``bpfdiff/interp``, ``bpfdiff/jit``,
   ``bpfdiff/fuzz``), applies the one change there and runs a child Python
   with that directory first on ``sys.path`` (it checks that it imported the
   copy, never the installed package);
3. in the child, for each profile, runs the campaign's own worker
   (:class:`bpfdiff.fuzz.campaign.Worker`: generated scenarios ``seed``,
   ``seed + 1``, ... through the oracle with the normal engines) for up to
   ``--scenarios`` scenarios and stops at the first finding that is not a
   known kernel bug of the profile (kinds ``divergence``, ``violation``,
   ``crash``, ``refused``).

A *baseline* campaign on the unmodified sources runs first with the same
seed: a scenario on which the clean tree already reports a new finding is
skipped in every mutated campaign, so that a detection is the mutation's.

The table: per mutation and profile ``found@K`` (K scenarios to the first
finding, its signature in the last column) or ``-`` (none in the budget;
``cut@K``: ``--time-limit`` ended the campaign after K), ``n/a`` where the
mutated code cannot run on that profile (e.g. ISA v4 on linux-6.1); last the
detection rate (a mutation counts as detected when one of its profiles finds
it) and, for each miss, the note that explains it.

Code both engines share -- ``bpfdiff/maps.py``, ``bpfdiff/helpers.py`` and
the verifier model's refusals -- cannot make ``interp`` and ``jit`` disagree
unless the bug's effect depends on what the engines do differently (memory
layout, the JIT's inlined array lookup): such mutations carry ``shared=True``.
A bug in code that the fix of one of the profile's known kernel bugs replaces
is named after that known bug by the oracle (with the fix applied the mutated
code no longer runs and the models agree): such mutations carry
``kernel=True``.  The real kernel engines share none of it and have none of
our mutations: ``--kernel-shared`` runs the shared and ``kernel`` mutations
once more with ``--kernel-engines`` (default ``interp,jit,kernel-jit``,
``--kernel-scenarios`` 300 on the first profile: qemu under TCG is slow) and
adds a column and a second detection rate: the rate of the whole campaign,
our engines and the real kernel's.

A mutation no run can tell apart from the original carries
``equivalent=True`` with the argument in its note (today one: a rel8 bound
that converged code never reaches).  As mutation testing scores, it is left
out of both rates unless some pass finds it (then it was not equivalent, and
it counts as found); it still runs, so a wrong argument shows.

A benchmark, not a test: with 3,000 scenarios per cell it runs for a long
time.  ``tests/test_mutations.py`` only checks that the snippets apply and the
mutated trees import.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# repository folder -> where it sits in the import tree (pyproject.toml's package-dir)
PACKAGE_DIRS = {"bpfdiff": "bpfdiff", "interp": "bpfdiff/interp", "jit": "bpfdiff/jit", "fuzz": "bpfdiff/fuzz"}
DEFAULT_PROFILES = ("linux-6.1", "linux-6.12")
DEFAULT_SCENARIOS = 3000
MIN_DETECTION = 0.90        # the rate the benchmark is meant to reach (printed, not enforced)

SHARED_NOTE = ("both engines run this code: interp and jit agree; the kernel engines see it "
               "(--kernel-shared, or --engines interp,jit,kernel-jit)")


@dataclass(frozen=True)
class Mutation:
    name: str
    area: str                 # jit, poke, emulator, interp, maps, helpers, xlate, verifier
    file: str                 # path in the repository
    original: str             # exact snippet, must occur exactly once in ``file``
    replacement: str
    what: str                 # the bug, in one line
    modelled_on: str = ""     # the kernel history it imitates
    profiles: tuple[str, ...] | None = None   # profiles where the mutated code runs (None: all)
    shared: bool = False      # code both default engines use alike
    kernel: bool = False      # masked for interp/jit by design (see the module doc): the kernel pass runs it
    equivalent: bool = False  # no run can tell it apart (the note proves it): out of the rate unless found
    note: str = ""            # why a miss is expected / what it needs

    def module(self) -> str:
        """The dotted module the mutated file is imported as."""
        top, _, rest = self.file.partition("/")
        parts = PACKAGE_DIRS[top].split("/") + rest[:-len(".py")].split("/")
        return ".".join(p for p in parts if p != "__init__")


MUTATIONS: tuple[Mutation, ...] = (
    # -- the JIT emitter (jit/bpf_jit_comp.py) ----------------------------------------------------
    Mutation(
        "jcc32-signed-as-unsigned", "jit", "jit/bpf_jit_comp.py",
        "        return bytes([0x0F, jmp_cond + 0x10]) + imm32(jmp_offset)",
        "        return bytes([0x0F, (X86_JA if jmp_cond == X86_JG else jmp_cond) + 0x10]) + imm32(jmp_offset)",
        "the rel32 form of a conditional jump emits `ja` for `jsgt` (the rel8 form is right)",
        "wrong condition code in one jump width",
        note="needs a `jsgt` whose displacement is beyond rel8 (a long forward block)"),
    Mutation(
        "jmp-rel8-backward-129", "jit", "jit/bpf_jit_comp.py",
        "    return -128 <= value <= imm8_max",
        "    return -129 <= value <= imm8_max",
        "a backward jump of exactly -129 bytes is emitted in the rel8 form (wraps to +127)",
        "is_imm8 boundary off by one", equivalent=True,
        note="equivalent in converged code: the JIT's passes only shrink code, so a backward jump first made "
             "short at -129 (while itself still 6 bytes long) ends at -125 or nearer once it shrinks; 5 of 994 "
             "generated programs converge to a different, shorter layout whose every jump is right. No engine run "
             "can see it; only a byte comparison with the real kernel's image (compare-jit) would"),
    Mutation(
        "is-imm8-unsigned", "jit", "jit/bpf_jit_comp.py",
        "    return -128 <= value <= 127",
        "    return -128 <= value <= 255",
        "is_imm8 accepts 128..255: immediates and displacements there are sign-extended by the CPU",
        "imm8/imm32 boundary (u8 vs s8)"),
    Mutation(
        "mul32-no-zext", "jit", "jit/bpf_jit_comp.py",
        "    return maybe_emit_mod(insn.src, dst, is64) + bytes([0x0F, 0xAF, add_2reg(0xC0, insn.src, dst)])",
        "    return maybe_emit_mod(insn.src, dst, True) + bytes([0x0F, 0xAF, add_2reg(0xC0, insn.src, dst)])",
        "32-bit `mul` by a register emitted as a 64-bit imul: the upper half is not zeroed",
        "missing zero-extension of a 32-bit ALU result",
        profiles=("linux-6.1", "linux-6.12")),
    Mutation(
        "le32-no-zext", "jit", "jit/bpf_jit_comp.py",
        '        return (b"\\x45" if is_ereg(dst) else b"") + bytes([0x89, add_2reg(0xC0, dst, dst)])',
        '        return b""',
        "`le32` treated as a no-op on little endian: the upper half is not zeroed",
        "missing zero-extension of BPF_END to_le 32"),
    Mutation(
        "be16-no-movzwl", "jit", "jit/bpf_jit_comp.py",
        '        return out + (b"\\x45\\x0f\\xb7" if is_ereg(dst) else b"\\x0f\\xb7")'
        " + bytes([add_2reg(0xC0, dst, dst)])",
        "        return out",
        "`be16` rotates the low word but drops the `movzwl`: bits 16-63 survive",
        "missing zero-extension after a 16-bit swap"),
    Mutation(
        "fetch-r0-src", "jit", "jit/bpf_jit_comp.py",
        "    real_src = BPF_REG_AX if src == 0 else src",
        "    real_src = src",
        "fetch and/or/xor with R0 as source uses rax after the cmpxchg loop clobbered it",
        "x86 JIT BPF_FETCH and/or/xor with r0 as src (2021)",
        profiles=("linux-6.1", "linux-6.12"),
        note="needs a fetch and/or/xor with R0 as source whose R0 or memory result reaches what the oracle "
             "compares (R0 is mostly overwritten before the exit)"),
    Mutation(
        "tcc-offset-no-roundup", "jit", "jit/bpf_jit_comp.py",
        '    return b"\\x48\\x8b\\x85" + imm32(-round_up8(fn.stack_depth) - 8)',
        '    return b"\\x48\\x8b\\x85" + imm32(-fn.stack_depth - 8)',
        "the counter reloaded before a bpf-to-bpf call ignores that the stack is rounded up to 8",
        "ff672c67ee76 'bpf, x86: Fix tail call count offset calculation on bpf2bpf call'",
        profiles=("linux-6.1", "linux-5.10"), kernel=True,
        note="masked by the known bug 116e04ba1459 of both profiles that have this code: with its fix (the counter "
             "through a pointer) the mutated reload is not emitted, so the oracle names every divergence "
             "known:116e04ba1459; the real kernel engine (kernel-jit, --kernel-shared) tells them apart"),
    Mutation(
        "site-nop5-mismatch", "jit", "jit/bpf_jit_comp.py",
        "    out += fn.profile.jit_nop5\n    ctx.tail_call_direct_label = len(out)",
        "    out += X86_NOPS[5]\n    ctx.tail_call_direct_label = len(out)",
        "the direct tail-call site is emitted with the P6 nop5, the text poke expects the profile's",
        "nop5 of the JIT vs the one text_poke compares (5.10: 66 66 66 66 90)",
        profiles=("linux-5.10",)),
    Mutation(
        "jeq32-imm0-test64", "jit", "jit/bpf_jit_comp.py",
        "        return maybe_emit_mod(dst, dst, is64) + bytes([0x85, add_2reg(0xC0, dst, dst)])   # test dst, dst",
        "        return maybe_emit_mod(dst, dst, True) + bytes([0x85, add_2reg(0xC0, dst, dst)])   # test dst, dst",
        "a 32-bit compare with 0 is emitted as a 64-bit `test`: the upper half decides",
        "test reg,reg shortcut with the wrong operand size"),
    Mutation(
        "div-src-rdx", "jit", "jit/bpf_jit_comp.py",
        "        if src in (0, 3):",
        "        if src == 0:",
        "div/mod by R3 (rdx) divides by rdx after `xor edx, edx` zeroed it",
        "div/mod operand clobbered by the rax:rdx set-up",
        profiles=("linux-6.1", "linux-6.12")),
    Mutation(
        "shift-dst-rcx-lost", "jit", "jit/bpf_jit_comp.py",
        "    if insn.dst == 4:\n        out += emit_mov(insn.dst, AUX_REG)       # mov rcx, r11\n",
        "",
        "a register shift whose destination is R4 (rcx) is done in r11 and never copied back",
        "shift by cl with rcx as destination",
        profiles=("linux-6.1", "linux-5.10")),
    Mutation(
        "sub-eax-imm32-opcode", "jit", "jit/bpf_jit_comp.py",
        "isa.BPF_SUB: (0xE8, 0x2D)",
        "isa.BPF_SUB: (0xE8, 0x25)",
        "`sub r0, imm32` (the short eax form) is encoded with the `and eax, imm32` opcode",
        "wrong opcode in one encoding form"),
    Mutation(
        "stxb-no-rex-sil", "jit", "jit/bpf_jit_comp.py",
        "if is_ereg(dst) or src in EXTENDED_8BIT_REGS else",
        "if is_ereg(dst) or is_ereg(src) else",
        "a byte store from R1/R2 (rdi/rsi) has no REX prefix: it stores bh/dh instead of dil/sil",
        "is_ereg_8l: sil/dil need a REX prefix",
        note="needs a byte store from R1/R2 into compared memory (packet, map value): stack stores are not compared"),
    Mutation(
        "mov32-imm-sext", "jit", "jit/bpf_jit_comp.py",
        "    if sign_propagate and value & 0x80000000:",
        "    if value & 0x80000000:",
        "a 32-bit `mov` of a negative immediate (and lddw of 2^31..2^32-1) sign-extends to 64 bits",
        "mov32 imm: zero-extension lost"),
    # -- the emulator's text poking ---------------------------------------------------------------
    Mutation(
        "text-poke-no-tb-flush", "emulator", "jit/emulator.py",
        "        self.native.remove_cache(addr, addr + len(data))",
        "        pass",
        "text poking writes the new bytes but does not drop the translated blocks covering them",
        "missing icache / translation-cache flush after text_poke"),
    # -- poke descriptors and the prog-array walk (jit/poke.py) -----------------------------------
    Mutation(
        "poke-rel32-from-start", "poke", "jit/poke.py",
        "    offset = target - (ip + X86_PATCH_SIZE)",
        "    offset = target - ip",
        "the poked `jmp rel32` is computed from the site's start, not from the next instruction",
        "wrong direct jmp target offset"),
    Mutation(
        "poke-subprog-images-skipped", "poke", "jit/poke.py",
        "        for image in program.images:",
        "        for image in program.images[:1]:",
        "map_poke_run re-patches the main image only: direct sites in subprograms keep their old bytes",
        "poke descriptors of subprograms not tracked (a748c6975dea era)",
        profiles=("linux-6.1", "linux-6.12"),
        note="needs a direct tail-call site inside a subprogram and a later update/delete of its slot"),
    Mutation(
        "poke-stable-only-if-filled", "poke", "jit/poke.py",
        "                _poke(\"bypass\", poke, poke.tailcall_bypass, poke.bypass_addr, None, read, write, problems)\n"
        "        poke.tailcall_target_stable = True",
        "                _poke(\"bypass\", poke, poke.tailcall_bypass, poke.bypass_addr, None, read, write, problems)\n"
        "            poke.tailcall_target_stable = True",
        "a program loaded while its slot is empty never marks the poke stable: it is never re-patched",
        "tailcall_target_stable / ip_stable set on the wrong path"),
    Mutation(
        "poke-delete-site-kept", "poke", "jit/poke.py",
        "        _poke(\"site\", poke, poke.tailcall_target, old_addr, None, read, write, problems)\n",
        "",
        "a delete re-arms the bypass but leaves the site's `jmp` in place",
        "half of the delete re-patch missing"),
    Mutation(
        "poke-fill-keeps-bypass", "poke", "jit/poke.py",
        "        if old_func is None:\n            _poke(\"bypass\"",
        "        if old_func is not None:\n            _poke(\"bypass\"",
        "a fill of an empty slot leaves the bypass armed (the retarget path tries to disarm it instead)",
        "bypass jmp->nop condition inverted"),
    # -- the interpreter (interp/) -----------------------------------------------------------------
    Mutation(
        "interp-shift32-mask63", "interp", "interp/decode.py",
        '"SHIFT": str(bits - 1)',
        '"SHIFT": "63"',
        "32-bit shift counts are masked to 6 bits instead of 5",
        "shift masking to the wrong operand width",
        note="needs a 32-bit shift by a register holding 32..63"),
    Mutation(
        "interp-sdiv-floor", "interp", "interp/decode.py",
        "    q = abs(sa) // abs(sb)\n    return (-q if (sa < 0) != (sb < 0) else q) & ((1 << bits) - 1)",
        "    return (sa // sb) & ((1 << bits) - 1)",
        "sdiv rounds towards minus infinity instead of towards zero",
        "signed division corner case (ISA v4)",
        profiles=("linux-6.12",),
        note="needs an sdiv with operands of different signs and a remainder, whose result reaches R0 or memory "
             "(about 1 in 13 generated scenarios has such an sdiv; the result is mostly thrown away)"),
    Mutation(
        "interp-smod-divisor-sign", "interp", "interp/decode.py",
        "    return (-rem if sa < 0 else rem) & ((1 << bits) - 1)",
        "    return (-rem if sb < 0 else rem) & ((1 << bits) - 1)",
        "smod's result takes the divisor's sign instead of the dividend's",
        "signed modulo corner case (ISA v4)",
        profiles=("linux-6.12",)),
    Mutation(
        "interp-jset32-64bit", "interp", "interp/decode.py",
        "_JUMP_TEMPLATE, {\"cond\": cond.format(a=dst_read, b=src_read, **params)})",
        "_JUMP_TEMPLATE, {\"cond\": cond.format(a=\"r[dst]\" if op == BPF_JSET else dst_read,\n"
        "                                                       "
        "b=\"r[src]\" if op == BPF_JSET and source else src_read,\n"
        "                                                       **params)})",
        "a 32-bit `jset` with a register source tests all 64 bits",
        "jmp32 reading the full registers",
        note="needs jset32 reg with the low halves' AND zero and the high halves' non-zero"),
    Mutation(
        "interp-cmpxchg32-compare64", "interp", "interp/decode.py",
        "            if old == r[0] & mask:",
        "            if old == r[0]:",
        "a 32-bit cmpxchg compares the old value with all of R0",
        "cmpxchg comparand width",
        profiles=("linux-6.1", "linux-6.12"),
        note="needs a 32-bit cmpxchg whose R0 has a non-zero upper half and equal low halves"),
    Mutation(
        "interp-mod32-zero-keeps-upper", "interp", "interp/decode.py",
        '(BPF_MOD, 0): "a % b if (b := {b}) else a",',
        '(BPF_MOD, 0): "a % b if (b := {b}) else r[dst]",',
        "a 32-bit mod by zero leaves dst untouched instead of truncating it to 32 bits",
        "9b00f1b78809 'bpf: Fix truncation handling for mod32 dst reg wrt zero'",
        note="needs a 32-bit mod by a register whose low half is zero, dst with a non-zero upper half"),
    Mutation(
        "interp-count-restored-after-call", "interp", "interp/vm.py",
        'RESTORE_COUNT_ON_RETURN = {"copy": True, "shared": False, "reset": True}',
        'RESTORE_COUNT_ON_RETURN = {"copy": True, "shared": True, "reset": True}',
        "after a bpf-to-bpf call the caller gets back its own tail-call count: the callee's calls are lost",
        "the tail-call counter passed by value (what 116e04ba1459 fixed in the JIT)",
        note="on linux-6.1 the interpreter then matches the JIT's known bug 116e04ba1459; linux-6.12 sees it"),
    Mutation(
        "interp-tail-call-index-gt", "interp", "interp/vm.py",
        "        if index >= prog_array.max_entries:\n            return None",
        "        if index > prog_array.max_entries:\n            return None",
        "the tail-call bounds test lets index == max_entries through to the slot read (an empty slot)",
        "bounds check `>` for `>=`",
        # the slot read gives NULL: visible only through the counter, where the profile counts a call
        # through an empty slot (tail_call_counts_empty_slot): not on linux-6.12 (equivalent there); on
        # linux-6.1/5.10 the fix of their known bug 116e04ba1459 stops that count, so the oracle names
        # the divergence known:116e04ba1459; linux-5.5 counts it and has no such bug
        profiles=("linux-5.5",),
        note="needs a tail call through key == max_entries before tail calls that reach the limit"),
    Mutation(
        "interp-tail-call-limit-gt", "interp", "bpfdiff/profiles.py",
        "        return not count >= self.max_tail_call_cnt",
        "        return not count > self.max_tail_call_cnt",
        "the interpreter's counter test uses `>` where the profile's kernel uses `>=`: 34 tail calls",
        "b61a28cf11d6 'Fix off-by-one in tail call count limiting' (the other direction)",
        profiles=("linux-6.1", "linux-6.12")),
    # -- the maps (bpfdiff/maps.py): one implementation for both engines ------------------------
    Mutation(
        "array-update-bound-gt", "maps", "bpfdiff/maps.py",
        "        if index >= self.max_entries:\n            return -errno.E2BIG\n        if flags & BPF_NOEXIST:",
        "        if index > self.max_entries:\n            return -errno.E2BIG\n        if flags & BPF_NOEXIST:",
        "array update accepts index == max_entries and writes one element past the values",
        "array bounds check `>` for `>=`",
        shared=True, note=SHARED_NOTE),
    Mutation(
        "array-lookup-bound-gt", "maps", "bpfdiff/maps.py",
        "        if index >= self.max_entries:\n            return 0\n        return self.value_addr(index)",
        "        if index > self.max_entries:\n            return 0\n        return self.value_addr(index)",
        "array lookup returns a pointer for index == max_entries",
        "array bounds check `>` for `>=`",
        shared=True,
        note="the JIT inlines array lookups (array_map_gen_lookup) and does not call this: needs a lookup "
             "of key == max_entries; else " + SHARED_NOTE),
    Mutation(
        "hash-update-ignores-exist", "maps", "bpfdiff/maps.py",
        "        if old is None and flags & ~BPF_F_LOCK == BPF_EXIST:\n            return -errno.ENOENT\n",
        "",
        "hash update with BPF_EXIST inserts a missing key instead of failing with -ENOENT",
        "htab update flag checks (check_flags)",
        shared=True, note=SHARED_NOTE),
    # -- helpers (bpfdiff/helpers.py): the JIT engine's helper hook calls the same functions -------
    Mutation(
        "helper-update-drops-flags", "helpers", "bpfdiff/helpers.py",
        "    return bpf_map.update(key, value, r4)",
        "    return bpf_map.update(key, value, 0)",
        "bpf_map_update_elem called from a program ignores its flags (BPF_NOEXIST/BPF_EXIST act as BPF_ANY)",
        "a helper dropping an argument",
        shared=True, note=SHARED_NOTE),
    # -- the verifier model and its rewrites (bpfdiff/verifier.py, jit/xlate.py) ------------------
    Mutation(
        "verifier-refuses-shift-31", "verifier", "bpfdiff/verifier.py",
        "        if not 0 <= insn.imm < width:",
        "        if not 0 <= insn.imm < width - 1:",
        "the model refuses a constant shift by width - 1 (31, 63) as 'invalid shift'",
        "check_alu_op shift bound off by one (a false rejection)",
        shared=True,
        note="both engines ask the one verifier model: they refuse alike and the scenario is skipped as invalid; "
             "a kernel engine loads it (a `refused` finding)"),
    Mutation(
        "xlate-array-lookup-jgt", "xlate", "jit/xlate.py",
        "            _jmp(True, isa.BPF_JGE, 0, 3, mapdef.max_entries),",
        "            _jmp(True, isa.BPF_JGT, 0, 3, mapdef.max_entries),",
        "the inlined array lookup's bound test lets index == max_entries through",
        "array_map_gen_lookup bound `>` for `>=`",
        note="needs a lookup with key == max_entries"),
    Mutation(
        "xlate-array-lookup-elem-size", "xlate", "jit/xlate.py",
        "    elem_size = (mapdef.value_size + 7) & ~7\n    if elem_size & (elem_size - 1) == 0:",
        "    elem_size = mapdef.value_size\n    if elem_size & (elem_size - 1) == 0:",
        "the inlined array lookup scales the index by value_size, not by round_up(value_size, 8)",
        "array_map_gen_lookup elem_size without round_up",
        note="needs an array whose value_size is not a multiple of 8 and a lookup of a key >= 1"),
    Mutation(
        "xlate-mod32-guard-no-trunc", "xlate", "jit/xlate.py",
        "    patch = [_jmp(is64, isa.BPF_JEQ, insn.src, 1 + (0 if is64 else 1), 0), insn]",
        "    patch = [_jmp(is64, isa.BPF_JEQ, insn.src, 1, 0), insn]",
        "the mod-by-zero guard of the 32-bit form skips the truncation of dst",
        "9b00f1b78809 (the JIT side: chk_and_mod without the mov32)",
        note="needs a 32-bit mod by a register whose low half is zero, dst with a non-zero upper half"),
    # the path-sensitive model (verifier.explore over bpfdiff/scalar.py) decides which code is
    # live, the direct tail-call keys and the inlined lookups of xlate: its bugs reach the JIT only
    Mutation(
        "verifier-mov32-no-zext", "verifier", "bpfdiff/verifier.py",
        '                return ("s", scalar.zext(src[1]))',
        "                return src",
        "a 32-bit mov of a tracked register keeps the source's 64-bit bounds (no zext_32_to_64)",
        "tnum/bounds of a 32-bit subregister write not truncated",
        note="visible when the wrong knowledge decides a branch (dead-code removal) or a tail-call key"),
    Mutation(
        "verifier-arsh-const-as-rsh", "verifier", "bpfdiff/scalar.py",
        "            r = (s32(x) if alu32 else s64(x)) >> b",
        "            r = x >> b",
        "constant folding: an arithmetic right shift of a known negative value is folded as a logical one",
        "constant tracking folding wrongly",
        note="visible when the wrong constant decides a branch (dead-code removal) or a tail-call key"),
    Mutation(
        "verifier-jmp32-branch-on-64", "verifier", "bpfdiff/scalar.py",
        "        v, m = t_subreg((s.value, s.mask))",
        "        v, m = s.value, s.mask",
        "is_branch_taken decides jeq32/jne32/jset32 on the 64-bit tnum: dead-code removal drops a live branch",
        "is_branch_taken for jmp32 (several verifier fixes)",
        # 6.12 (verifier_branch_ranges) decides branches in branch_taken_ranges instead: see below
        profiles=("linux-6.1", "linux-5.10"),
        note="needs a jmp32 eq/ne/set on a known value whose upper half changes the outcome"),
    Mutation(
        "verifier-ranges-jmp32-on-64", "verifier", "bpfdiff/scalar.py",
        "        t1, t2 = t_subreg((a.value, a.mask)), t_subreg((b.value, b.mask))",
        "        t1, t2 = (a.value, a.mask), (b.value, b.mask)",
        "v6.8's is_scalar_branch_taken decides jeq32/jne32/jset32 on the 64-bit tnums: dead-code removal "
        "drops a live branch",
        "is_branch_taken for jmp32 (several verifier fixes), in the v6.8 form",
        profiles=("linux-6.12",),
        note="needs a jmp32 eq/ne/set on values whose upper halves change the outcome"),
    Mutation(
        "verifier-jeq-refines-wrong-branch", "verifier", "bpfdiff/scalar.py",
        "            true_r.mark_known(val64)\n            t64 = true_r.off",
        "            false_r.mark_known(val64)\n            f64 = false_r.off",
        "`jeq r, K` (64-bit) makes r == K on the fall-through path instead of the taken one",
        "reg_set_min_max refining the wrong branch",
        profiles=("linux-6.1", "linux-5.10"),       # 6.12 refines in set_min_max_ranges: see below
        note="needs a jeq against a constant whose register later decides a branch or a tail-call key"),
    Mutation(
        "verifier-ranges-refine-swapped", "verifier", "bpfdiff/scalar.py",
        "    for cond in (op, REVERSE[op]):",
        "    for cond in (REVERSE[op], op):",
        "v6.8's reg_set_min_max refines the taken path by the reversed condition and the fall-through "
        "by the jump's own",
        "reg_set_min_max refining the wrong branch, in the v6.8 form",
        profiles=("linux-6.12",),
        note="needs a compare whose refined register later decides a branch or a tail-call key"),
    Mutation(
        "xlate-stack-depth-short", "xlate", "jit/xlate.py",
        "                self.depth = max(self.depth, -slot)",
        "                self.depth = max(self.depth, -slot - 8)",
        "stack depth counted 8 bytes short: the deepest slot lies below the frame the JIT reserves",
        "stack depth off by the access size",
        note="the slot below the frame is overwritten by a push or a call's return address"),
)

MUTATIONS_BY_NAME = {m.name: m for m in MUTATIONS}


class StaleMutation(Exception):
    """A mutation's snippet does not occur exactly once (the code moved)."""


def apply_mutation(text: str, mutation: Mutation) -> str:
    count = text.count(mutation.original)
    if count != 1:
        raise StaleMutation(f"{mutation.file}: mutation {mutation.name}: the snippet occurs {count} times "
                            f"(want exactly 1): {mutation.original.splitlines()[0].strip()!r}")
    return text.replace(mutation.original, mutation.replacement)


def check_snippets(root: Path = ROOT, mutations: tuple[Mutation, ...] = MUTATIONS) -> list[str]:
    """One line per mutation whose snippet does not apply uniquely (empty: all apply)."""
    problems = []
    for mutation in mutations:
        path = root / mutation.file
        if not path.is_file():
            problems.append(f"{mutation.file}: mutation {mutation.name}: no such file")
            continue
        if mutation.original == mutation.replacement:
            problems.append(f"{mutation.file}: mutation {mutation.name}: the replacement changes nothing")
            continue
        try:
            apply_mutation(path.read_text(), mutation)
        except StaleMutation as exc:
            problems.append(str(exc))
    return problems


def build_tree(dest: Path, mutation: Mutation | None, root: Path = ROOT) -> Path:
    """The package laid out for import under ``dest``, with ``mutation`` applied; returns ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, where in sorted(PACKAGE_DIRS.items(), key=lambda item: item[1].count("/")):
        shutil.copytree(root / src, dest / where, ignore=ignore, dirs_exist_ok=True)
    if mutation is not None:
        top, _, rest = mutation.file.partition("/")
        target = dest / PACKAGE_DIRS[top] / rest
        target.write_text(apply_mutation((root / mutation.file).read_text(), mutation))
    return dest


def child_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _assert_imported_from(tree: Path) -> None:
    import bpfdiff.fuzz
    import bpfdiff.interp
    import bpfdiff.jit

    import bpfdiff

    for module in (bpfdiff, bpfdiff.interp, bpfdiff.jit, bpfdiff.fuzz):
        if not Path(module.__file__).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"mutations: {module.__name__} imported from {module.__file__}, not from {tree}")


# ---------------------------------------------------------------------------
# The child: campaigns in a mutated tree
# ---------------------------------------------------------------------------
def campaign_until_finding(profile: str, scenarios: int, seed: int, engines: tuple[str, ...],
                           skip: set[int], time_limit: float | None, collect: bool = False) -> dict:
    """Generated scenarios through the oracle until the first new finding (or all of them when ``collect``)."""
    from bpfdiff.fuzz.campaign import CampaignConfig, Worker
    from bpfdiff.fuzz.oracle import NEW_KINDS

    config = CampaignConfig(runs=scenarios, seed=seed, profile=profile, engines=engines)
    worker = Worker(config, 0, [])
    start = time.monotonic()
    done = 0
    noisy: list[int] = []
    result: dict = {"profile": profile, "found": False, "scenarios": 0, "signature": "", "kind": "",
                    "origin": "", "error": ""}
    try:
        while done < scenarios:
            if time_limit is not None and time.monotonic() - start > time_limit:
                result["error"] = f"time limit {time_limit:.0f}s"
                break
            index = done
            n, _runs, _invalid, items = worker.step()
            done += n
            news = [item for item in items if item.kind == "finding" and item.finding.kind in NEW_KINDS]
            if not news:
                continue
            if collect:
                noisy.append(index)
                continue
            if index in skip:
                continue
            finding = news[0].finding
            result.update(found=True, signature=finding.signature, kind=finding.kind, origin=news[0].origin)
            break
    except Exception as exc:   # the mutated code broke the generator or the campaign itself
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        worker.pool.close()
    result["scenarios"] = done
    result["seconds"] = round(time.monotonic() - start, 1)
    if collect:
        result["noisy"] = noisy
    return result


def child_main(args: argparse.Namespace) -> int:
    tree = Path(args.tree)
    _assert_imported_from(tree)
    skip = {int(k): set(v) for k, v in json.loads(args.skip).items()} if args.skip else {}
    results = []
    for index, profile in enumerate(args.profiles.split(",")):
        results.append(campaign_until_finding(profile, args.scenarios, args.seed, tuple(args.engines.split(",")),
                                              skip.get(index, set()), args.time_limit, collect=args.collect))
    print(json.dumps(results))
    return 0


def check_imports_main(names: list[str]) -> int:
    """Build every mutated tree in turn and import its mutated module plus the campaign (one process)."""
    import importlib

    sys.dont_write_bytecode = True
    failures = 0
    for name in names:
        mutation = MUTATIONS_BY_NAME[name]
        with tempfile.TemporaryDirectory(prefix="bpfdiff-mut-") as tmp:
            tree = build_tree(Path(tmp), mutation)
            sys.path.insert(0, str(tree))
            try:
                for module in [m for m in sys.modules if m == "bpfdiff" or m.startswith("bpfdiff.")]:
                    del sys.modules[module]
                importlib.invalidate_caches()
                mod = importlib.import_module(mutation.module())
                importlib.import_module("bpfdiff.fuzz.campaign")
                importlib.import_module("bpfdiff.jit.engine")
                importlib.import_module("bpfdiff.interp.engine")
                if not Path(mod.__file__).resolve().is_relative_to(tree.resolve()):
                    raise ImportError(f"{mutation.module()} came from {mod.__file__}")
                print(f"ok {name}")
            except Exception as exc:  # report every broken tree, not only the first
                failures += 1
                print(f"FAIL {name}: {type(exc).__name__}: {exc}")
            finally:
                sys.path.remove(str(tree))
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------
def run_child(mutation: Mutation | None, profiles: list[str], args: argparse.Namespace, engines: str,
              scenarios: int, skip: dict[int, list[int]] | None = None, collect: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bpfdiff-mut-") as tmp:
        tree = build_tree(Path(tmp), mutation)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--tree", str(tree),
               "--profiles", ",".join(profiles), "--scenarios", str(scenarios), "--seed", str(args.seed),
               "--engines", engines]
        if skip:
            cmd += ["--skip", json.dumps(skip)]
        if collect:
            cmd.append("--collect")
        if args.time_limit is not None:
            cmd += ["--time-limit", str(args.time_limit)]
        proc = subprocess.run(cmd, env=child_env(tree), cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"profile": p, "found": False, "scenarios": 0, "signature": "", "kind": "", "origin": "",
                 "error": f"child exit {proc.returncode}: {error}"} for p in profiles]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cell(result: dict | None) -> str:
    if result is None:
        return "n/a"
    if result["found"]:
        return f"found@{result['scenarios']}"
    if result.get("error", "").startswith("time limit"):
        return f"cut@{result['scenarios']}"        # --time-limit ran out first: none in that many
    if result.get("error"):
        return "error"
    return "-"


@dataclass
class Pass:
    """One configuration the mutations run under: engines, scenarios per cell, profiles per mutation."""

    label: str
    engines: str
    scenarios: int
    plan: dict[str, list[str]]          # mutation name -> profiles it runs on
    noisy: dict[str, list[int]] | None = None


def run_pass(chosen: list[Mutation], run: Pass, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Baseline (clean tree) per profile, then every mutation of ``run.plan``; mutation name -> results."""
    profiles = list(dict.fromkeys(p for m in chosen for p in run.plan.get(m.name, [])))
    run.noisy = {}
    if not args.no_baseline:
        def baseline(profile: str) -> dict:
            return run_child(None, [profile], args, run.engines, run.scenarios, collect=True)[0]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for result in pool.map(baseline, profiles):
                run.noisy[result["profile"]] = result.get("noisy", [])
                extra = f", error {result['error']}" if result.get("error") else ""
                print(f"baseline ({run.label}) {result['profile']}: {result['scenarios']} scenarios in "
                      f"{result['seconds']}s, {len(result.get('noisy', []))} with a new finding{extra}", flush=True)

    def one(mutation: Mutation) -> tuple[str, list[dict]]:
        mine = run.plan[mutation.name]
        skip = {i: run.noisy.get(p, []) for i, p in enumerate(mine) if run.noisy.get(p)}
        results = run_child(mutation, mine, args, run.engines, run.scenarios, skip=skip)
        line = "  ".join(f"{r['profile']} {cell(r)}" for r in results)
        print(f"  ({run.label}) {mutation.name}: {line}", file=sys.stderr, flush=True)
        return mutation.name, results

    todo = [m for m in chosen if run.plan.get(m.name)]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return dict(pool.map(one, todo))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=DEFAULT_SCENARIOS,
                        help="generated scenarios per mutation and profile (default %(default)s)")
    parser.add_argument("--profiles", default=",".join(DEFAULT_PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default="interp,jit")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run in parallel")
    parser.add_argument("--only", action="append", default=[], help="run these mutations (NAME[,NAME])")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the clean campaigns")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds per campaign (default: none)")
    parser.add_argument("--kernel-shared", action="store_true",
                        help="also run the shared and masked mutations with a kernel engine (qemu: slow)")
    parser.add_argument("--kernel-engines", default="interp,jit,kernel-jit")
    parser.add_argument("--kernel-scenarios", type=int, default=300)
    parser.add_argument("--check-imports", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--skip", help=argparse.SUPPRESS)
    parser.add_argument("--collect", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)

    problems = check_snippets()
    if problems:
        for line in problems:
            print(f"mutations: error: {line}", file=sys.stderr)
        return 2
    names = [n for group in args.only for n in group.split(",") if n]
    unknown = [n for n in names if n not in MUTATIONS_BY_NAME]
    if unknown:
        print(f"mutations: error: unknown mutation {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    chosen = [MUTATIONS_BY_NAME[n] for n in names] if names else list(MUTATIONS)
    if args.check_imports:
        return check_imports_main([m.name for m in chosen])
    if args.list:
        for m in chosen:
            where = ",".join(m.profiles) if m.profiles else "all"
            flags = (" shared" if m.shared else "") + (" kernel" if m.kernel else "")
            print(f"{m.name:<34} {m.area:<9} {m.file:<22} [{where}]{flags}  {m.what}")
        return 0

    profiles = [p for p in args.profiles.split(",") if p]
    # the profiles each mutation runs on: its own where it names them (e.g. linux-5.10 for 5.10's nop5)
    plan = {m.name: ([p for p in profiles if m.profiles is None or p in m.profiles]
                     or [p for p in (m.profiles or ()) if p not in profiles][:1]) for m in chosen}
    passes = [Pass(args.engines, args.engines, args.scenarios, plan)]
    if args.kernel_shared:
        # one profile (the first that applies), fewer scenarios: every run goes through a qemu guest
        kplan = {m.name: plan[m.name][:1] for m in chosen if m.shared or m.kernel}
        passes.append(Pass("kernel", args.kernel_engines, args.kernel_scenarios, kplan))
    started = time.monotonic()
    print(f"mutation benchmark: {len(chosen)} mutations, up to {args.scenarios} scenarios per profile, "
          f"seed {args.seed}, engines {args.engines}, jobs {args.jobs}"
          + (f"; shared and masked ones also with {args.kernel_engines}, {args.kernel_scenarios} scenarios"
             if args.kernel_shared else ""), flush=True)
    results = [run_pass(chosen, run, args) for run in passes]
    print_table(chosen, passes, results, args, time.monotonic() - started)
    return 0


def print_table(chosen: list[Mutation], passes: list[Pass], results: list[dict[str, list[dict]]],
                args: argparse.Namespace, seconds: float) -> None:
    main_pass, main_results = passes[0], results[0]
    columns = list(dict.fromkeys(p for m in chosen for p in main_pass.plan[m.name]))
    columns = [c for c in DEFAULT_PROFILES if c in columns] + [c for c in columns if c not in DEFAULT_PROFILES]
    extra = [(run, res) for run, res in zip(passes[1:], results[1:], strict=True)]
    width = max(len(m.name) for m in chosen) + 2
    head = (f"{'mutation':<{width}}{'area':<10}" + "".join(f"{c:<14}" for c in columns)
            + "".join(f"{run.label:<14}" for run, _ in extra) + "first signature / notes")
    print()
    print(head)
    print("-" * len(head))
    detected = detected_any = cells = cells_found = 0
    misses, equivalent = [], []
    for mutation in chosen:
        mine = main_results.get(mutation.name, [])
        by_profile = {r["profile"]: r for r in mine}
        found = [r for r in mine if r["found"]]
        later = [r for _, res in extra for r in res.get(mutation.name, [])]
        later_found = [r for r in later if r["found"]]
        if mutation.equivalent and not (found or later_found):
            equivalent.append(mutation.name)   # as mutation testing scores: a found one was not equivalent
        detected += bool(found)
        detected_any += bool(found or later_found)
        cells += len(mine)
        cells_found += len(found)
        row = f"{mutation.name:<{width}}{mutation.area:<10}" + "".join(f"{cell(by_profile.get(c)):<14}"
                                                                      for c in columns)
        for _, res in extra:
            got = res.get(mutation.name)
            row += f"{cell(got[0]) if got else '':<14}"
        if found:
            tail = found[0]["signature"]
        else:
            errors = [r["error"] for r in mine if r.get("error")]
            tail = "MISS: " + (mutation.note or "no note") + (f" [{errors[0]}]" if errors else "")
            if later_found:
                tail += f" -- with {extra[0][0].engines}: {later_found[0]['signature']}"
            if mutation.name not in equivalent:
                misses.append(mutation.name)
        print(row + tail)
    total = len(chosen) - len(equivalent)
    rate = detected / total if total else 0.0
    print()
    print(f"detected {detected}/{total} mutations ({100 * rate:.0f}%; target {100 * MIN_DETECTION:.0f}%) with "
          f"{main_pass.engines}, {cells_found}/{cells} mutation x profile cells; {main_pass.scenarios} scenarios "
          f"per cell, seed {args.seed}; {seconds:.0f}s")
    if extra:
        print(f"with the shared and masked ones also run on {extra[0][0].engines} ({extra[0][0].scenarios} scenarios): "
              f"{detected_any}/{total} ({100 * detected_any / total:.0f}%)")
    if misses:
        print(f"missed with {main_pass.engines}: {', '.join(misses)}")
    if equivalent:
        print(f"not counted, equivalent (no run can tell them apart; see their notes): {', '.join(equivalent)}")


if __name__ == "__main__":
    sys.exit(main())
