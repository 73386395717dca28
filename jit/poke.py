"""Direct tail-call poke sites: descriptors, text poking and the prog-array re-patch walk.

Models, as pure functions over ``read(addr, n) -> bytes`` / ``write(addr, data)``
callbacks (a bytearray in tests, unicorn memory in the engine):

* :class:`PokeDescriptor` -- ``struct bpf_jit_poke_descriptor`` (include/linux/bpf.h):
  the patch site (``tailcall_target``), on v5.10+ JITs the *bypass* jump in front
  of the register pops (``tailcall_bypass``, jumping to ``bypass_addr``, the
  first byte after the site), ``adj_off`` (the prologue bytes a tail call skips),
  the (map, key) it tracks and the stable flag that
  ``bpf_tail_call_direct_fixup`` sets once the image is final.  The seed-era
  (v5.5) descriptor has only the site (``ip`` / ``ip_stable`` in that kernel):
  ``tailcall_bypass`` is ``None`` there, and the walk below patches the site
  alone -- the descriptor's shape, not a profile name, selects the behaviour.
* :func:`bpf_arch_text_poke` -- ``__bpf_arch_text_poke`` of
  arch/x86/net/bpf_jit_comp.c: build the expected old and the new 5-byte
  instruction (``nop5`` for "no address", else ``jmp rel32``), refuse with
  ``-EBUSY`` if the site does not hold the old one, return 1 (nothing written)
  if it already holds the new one, else write the new one and return 0.
* :func:`bpf_tail_call_direct_fixup` -- at the end of the JIT: for each poke
  whose slot is filled *now*, site nop->jmp and (v5.10+) bypass jmp->nop; then
  mark it stable, so that later map updates see it.
* :func:`map_poke_run` -- ``prog_array_map_poke_run`` of kernel/bpf/arraymap.c:
  after a prog-array slot changed (``old_func`` -> ``new_func``, ``None`` for an
  empty slot), re-poke every *stable* site that tracks (map, key), in the
  kernel's order: on fill, target first then bypass jmp->nop; on delete, bypass
  nop->jmp first, then target jmp->nop.

The kernel treats a failing poke here as a bug (``BUG_ON(ret < 0 && ret !=
-EINVAL)``); we return such failures as strings so the engine can report them
as self-check violations.

Planted bugs living here (bpfdiff/bugs.py): ``poke-skip-delete`` (the walk
ignores deletes) and ``poke-retarget-stale`` (the walk leaves jmp->jmp sites
alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

X86_PATCH_SIZE = 5
NOP5 = bytes.fromhex("0f1f440000")      # x86_nops[5], the P6 5-byte nop (nopl 0x0(%rax,%rax,1))
JMP_REL32 = 0xE9

EBUSY = 16
ERANGE = 34

Read = Callable[[int, int], bytes]
Write = Callable[[int, bytes], None]


@dataclass(eq=False)
class PokeDescriptor:
    """One direct tail-call site of a JIT image (``struct bpf_jit_poke_descriptor``)."""

    map: str                        # the prog array (tail_call.map)
    key: int                        # its constant key (tail_call.key)
    insn_idx: int                   # xlated pc of the BPF_TAIL_CALL instruction
    adj_off: int                    # bytes of the target's prologue that the jump skips
    tailcall_target: int = 0        # address of the 5-byte patch site
    tailcall_bypass: int | None = None   # v5.10+: address of the bypass jmp; None on v5.5
    bypass_addr: int | None = None       # v5.10+: where the bypass jumps (right after the site)
    tailcall_target_stable: bool = False
    nop: bytes = NOP5                    # the kernel's 5-byte nop for this site (5.10: 66 66 66 66 90)

    @property
    def ip_stable(self) -> bool:
        """The seed-era name of the stable flag."""
        return self.tailcall_target_stable

    @property
    def ip(self) -> int:
        """The seed-era name of the patch site."""
        return self.tailcall_target


class HasPokes(Protocol):
    """Anything with ``images``, each with ``pokes`` (a :class:`~bpfdiff.jit.bpf_jit_comp.JitProgram`)."""

    images: list


def emit_patch(target: int | None, ip: int, opcode: int = JMP_REL32, nop: bytes = NOP5) -> bytes:
    """The 5 bytes at ``ip`` that jump (or call) to ``target``; ``nop`` when target is None."""
    if target is None:
        return nop
    offset = target - (ip + X86_PATCH_SIZE)
    if not -(1 << 31) <= offset < (1 << 31):
        raise ValueError(f"target 0x{target:x} is out of rel32 range of 0x{ip:x}")
    return bytes([opcode]) + offset.to_bytes(4, "little", signed=True)


def bpf_arch_text_poke(ip: int, old_addr: int | None, new_addr: int | None, read: Read, write: Write,
                       nop: bytes = NOP5) -> int:
    """``__bpf_arch_text_poke(ip, BPF_MOD_JUMP, old, new)``: 0 written, 1 already new, -EBUSY mismatch."""
    try:
        old_insn = emit_patch(old_addr, ip, nop=nop)
        new_insn = emit_patch(new_addr, ip, nop=nop)
    except ValueError:
        return -ERANGE
    if read(ip, X86_PATCH_SIZE) != old_insn:
        return -EBUSY
    if read(ip, X86_PATCH_SIZE) == new_insn:
        return 1
    write(ip, new_insn)
    return 0


ERRNO_NAMES = {-EBUSY: "-EBUSY", -ERANGE: "-ERANGE"}


def _poke(what: str, poke: PokeDescriptor, ip: int, old: int | None, new: int | None,
          read: Read, write: Write, problems: list[str]) -> int:
    ret = bpf_arch_text_poke(ip, old, new, read, write, poke.nop)
    if ret < 0:
        problems.append(f"text poke of the tail-call {what} at 0x{ip:x} ({poke.map}[{poke.key}]) failed: "
                        f"{ERRNO_NAMES.get(ret, str(ret))}")
    return ret


def bpf_tail_call_direct_fixup(pokes: Iterable[PokeDescriptor], prog_array_target: Callable[[str, int], int | None],
                               read: Read, write: Write) -> list[str]:
    """Patch the sites whose slot is already filled at load time, then mark every poke stable."""
    problems: list[str] = []
    for poke in pokes:
        target = prog_array_target(poke.map, poke.key)
        if target is not None:
            _poke("site", poke, poke.tailcall_target, None, target + poke.adj_off, read, write, problems)
            if poke.tailcall_bypass is not None:
                _poke("bypass", poke, poke.tailcall_bypass, poke.bypass_addr, None, read, write, problems)
        poke.tailcall_target_stable = True
    return problems


def poke_desc_update(poke: PokeDescriptor, old_func: int | None, new_func: int | None,
                     read: Read, write: Write, bugs: frozenset[str] = frozenset()) -> list[str]:
    """Re-patch one stable site for a slot change (the body of ``prog_array_map_poke_run``'s loop)."""
    problems: list[str] = []
    if new_func is None and "poke-skip-delete" in bugs:
        return problems        # planted: the delete is not propagated, the site keeps its jmp
    if old_func is not None and new_func is not None and "poke-retarget-stale" in bugs:
        return problems        # planted: jmp->jmp retarget skipped, the site keeps the old target
    old_addr = None if old_func is None else old_func + poke.adj_off
    new_addr = None if new_func is None else new_func + poke.adj_off
    if poke.tailcall_bypass is None:
        # v5.5: a single site, nop5 <-> jmp
        _poke("site", poke, poke.tailcall_target, old_addr, new_addr, read, write, problems)
        return problems
    if new_func is not None:
        # fill or retarget: the site first, then (if it was empty) disarm the bypass
        _poke("site", poke, poke.tailcall_target, old_addr, new_addr, read, write, problems)
        if old_func is None:
            _poke("bypass", poke, poke.tailcall_bypass, poke.bypass_addr, None, read, write, problems)
    else:
        # delete: re-arm the bypass first so that nobody reaches the site, then nop the site
        # (an empty slot deleted again: the bypass is already a jmp, the poke is a no-op)
        old_bypass_addr = None if old_func is not None else poke.bypass_addr
        _poke("bypass", poke, poke.tailcall_bypass, old_bypass_addr, poke.bypass_addr, read, write, problems)
        _poke("site", poke, poke.tailcall_target, old_addr, None, read, write, problems)
    return problems


def map_poke_run(programs: Iterable[HasPokes], map_name: str, key: int, old_func: int | None,
                 new_func: int | None, read: Read, write: Write, bugs: frozenset[str] = frozenset()) -> list[str]:
    """``prog_array_map_poke_run``: re-poke every stable site tracking (map, key); returns failures."""
    problems: list[str] = []
    for program in programs:
        for image in program.images:
            for poke in image.pokes:
                if not poke.tailcall_target_stable:
                    continue       # not yet fixed up: bpf_tail_call_direct_fixup will see the new slot
                if poke.map != map_name or poke.key != key:
                    continue
                problems.extend(poke_desc_update(poke, old_func, new_func, read, write, bugs))
    return problems
