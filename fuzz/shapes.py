"""What generated programs reach: measurements of the generator's finding power.

Two measurements, shared by ``bench/generator_power.py`` (which prints them)
and ``tests/test_generator_power.py`` (which asserts them on a fixed seed set):

* **jump displacements** -- every jump of every function, as the x86 JIT's
  final pass encodes it (``jmp_offset = addrs[target] - addrs[end of the
  jump]``, what ``is_imm8_jmp_offset`` decides the short or long form on):
  conditional jumps, ``ja`` and the ``jmp`` to the epilogue that every exit but
  the first becomes.  :func:`boundary_buckets` names the displacements at and
  around the short/long boundary of the profile (``Profile.jit_imm8_jmp_max``
  forward, -128 backward);
* **planted wrong values** -- :func:`plant_reaches_oracle` runs a scenario on
  the interpreter twice, the second time with the value a helper call or a
  fetching atomic writes perturbed (XOR with a constant), and says whether
  anything the oracle compares (R0, exit, memory, maps) changed: how often a
  wrong value computed in a register reaches a compared value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from bpfdiff.jit.bpf_jit_comp import JitEnv, JitOptions, bpf_int_jit_compile

from bpfdiff import isa
from bpfdiff.isa import Program
from bpfdiff.profiles import Profile, get_profile
from bpfdiff.scenario import Run, Scenario

COND = "cond"
UNCOND = "uncond"


def _env() -> JitEnv:
    next_addr = [0x7FFF_A000_0000]

    def alloc(size: int) -> int:
        addr = next_addr[0]
        next_addr[0] += (size + 4095) & ~4095
        return addr

    return JitEnv(alloc_image=alloc, helper_addr=lambda i: 0x7FFF_8100_0000 + 16 * i,
                  map_addr=lambda m: 0x7888_8000_0000, map_value_addr=lambda m: 0x7888_8000_0110,
                  indirect_thunk_addr=lambda reg: 0x7FFF_8200_0000 + 32 * reg)


def jump_sites(prog: Program, scenario: Scenario, profile: str | Profile) -> list[tuple[str, int, bytes]]:
    """(kind, displacement, x86 bytes of the slot) of every jump of ``prog`` in our JIT's final pass.

    Kinds: ``cond`` (conditional jumps, the verifier's inserted guards
    included), ``uncond`` (``ja`` with a non-zero offset, and every exit but
    each function's first, which jumps to the epilogue).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    maps = {m.name: m for m in scenario.maps}
    jited = bpf_int_jit_compile(prog, maps, prof, _env(), JitOptions(), lambda m, k: None, scenario.prog_type)
    out: list[tuple[str, int, bytes]] = []
    for image in jited.images:
        addrs = image.addrs
        insns = jited.xlated[image.first_insn:image.first_insn + len(addrs) - 1]
        cleanup = None
        for k, insn in enumerate(insns):
            end = addrs[k + 1]
            code = image.code[addrs[k]:end]
            if insn.is_exit:
                if cleanup is None:
                    cleanup = addrs[k]          # the first exit emits the epilogue
                else:
                    out.append((UNCOND, cleanup - end, code))
                continue
            if not insn.is_jmp or insn.op in (isa.BPF_CALL, isa.BPF_EXIT) or insn.opcode == isa.TAIL_CALL_OPCODE:
                continue
            if insn.op == isa.BPF_JA:
                rel = insn.off if insn.cls == isa.BPF_JMP else insn.imm
                if rel:
                    out.append((UNCOND, addrs[k + 1 + rel] - end, code))
                continue
            out.append((COND, addrs[k + 1 + insn.off] - end, code))
    return out


def jump_displacements(prog: Program, scenario: Scenario, profile: str | Profile) -> list[tuple[str, int]]:
    """(kind, displacement) of every jump of ``prog`` (see :func:`jump_sites`)."""
    return [(kind, disp) for kind, disp, _ in jump_sites(prog, scenario, profile)]


def boundary_buckets(profile: str | Profile) -> dict[str, tuple[int, int]]:
    """Displacement ranges (inclusive) at and around the profile's short/long jump boundary."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    fwd = prof.jit_imm8_jmp_max
    return {
        "fwd-short-edge": (fwd - 5, fwd),           # the longest short forward jumps
        "fwd-long-edge": (fwd + 1, fwd + 7),        # the shortest long ones
        "fwd-far": (2 * fwd + 2, 1 << 31),          # well beyond
        "back-short-edge": (-128, -120),
        "back-long-edge": (-135, -129),
        "back-far": (-(1 << 31), -257),
    }


def bucket_counts(displacements: list[tuple[str, int]], profile: str | Profile) -> Counter[str]:
    """``KIND:BUCKET`` -> how many of ``displacements`` fall in it."""
    counts: Counter[str] = Counter()
    buckets = boundary_buckets(profile)
    for kind, disp in displacements:
        for name, (lo, hi) in buckets.items():
            if lo <= disp <= hi:
                counts[f"{kind}:{name}"] += 1
    return counts


def scenario_displacements(scenario: Scenario, profile: str | Profile) -> list[tuple[str, int]]:
    return [d for prog in scenario.programs for d in jump_displacements(prog, scenario, profile)]


# -- planted wrong values ------------------------------------------------------------------------
PLANT_LOW = 0x100                   # a bit of the low half: visible to a 32-bit R0 compare directly
PLANT_HIGH = 1 << 40                # a bit of the high half: visible there only when folded down
M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1


@contextmanager
def planted(xor: int) -> Iterator[list[int]]:
    """While active, the interpreter perturbs what helper calls (R0) and fetching atomics write.

    Yields a one-element counter of how many perturbations happened.  Only
    scalar results are perturbed: ``map_lookup_elem`` returns a pointer and
    ``bpf_tail_call`` does not return.
    """
    from bpfdiff.interp import decode

    fired = [0]
    helper_closure, atomic_closure = decode._helper_closure, decode._atomic_closure

    def helper(helper_id: int, nxt: int) -> Callable:
        inner = helper_closure(helper_id, nxt)
        if helper_id == isa.BPF_FUNC_map_lookup_elem:
            return inner

        def run(r: list, m) -> int:
            pc = inner(r, m)
            r[0] ^= xor
            fired[0] += 1
            return pc
        return run

    def atomic(insn: isa.Insn, nxt: int) -> Callable:
        inner = atomic_closure(insn, nxt)
        if insn.imm == isa.BPF_CMPXCHG:
            reg = 0
        elif insn.imm & isa.BPF_FETCH:
            reg = insn.src
        else:
            return inner

        def run(r: list, m) -> int:
            pc = inner(r, m)
            r[reg] ^= xor
            fired[0] += 1
            return pc
        return run

    decode._helper_closure, decode._atomic_closure = helper, atomic
    decode.decoded.clear()
    try:
        yield fired
    finally:
        decode._helper_closure, decode._atomic_closure = helper_closure, atomic_closure
        decode.decoded.clear()


# Width-confusion bugs, planted in the interpreter: (table, key) of the decoder's closure factory,
# and the wrong computation (dst, src) -> result, or for a jump whether it is taken.  Each counts
# as fired only where it differs from the right answer: where the generator produced the operands
# that tell the widths apart.
def _jset32_reads_64(a: int, b: int) -> bool:
    return bool(a & b)                                   # right: a & b & M32


def _jeq32_reads_64(a: int, b: int) -> bool:
    return a == b                                        # right: a & M32 == b & M32


def _mod32_guard_64(a: int, b: int) -> int:
    if b and not b & M32:                               # the zero test looks at 64 bits: x86 div faults
        return 0xDEAD
    return (a & M32) % (b & M32) if b & M32 else a & M32


def _div32_guard_64(a: int, b: int) -> int:
    if b and not b & M32:
        return 0xDEAD
    return (a & M32) // (b & M32) if b & M32 else 0


def _div64_guard_32(a: int, b: int) -> int:
    return a // b if b & M32 else 0                      # the zero test looks at 32 bits only


WIDTH_PLANTS: dict[str, tuple[str, tuple[int, int, int, int] | tuple[int, int, int], Callable]] = {
    "jset32-reads-64": ("jump", (isa.BPF_JMP32, isa.BPF_JSET, isa.BPF_X), _jset32_reads_64),
    "jeq32-reads-64": ("jump", (isa.BPF_JMP32, isa.BPF_JEQ, isa.BPF_X), _jeq32_reads_64),
    "mod32-guard-64": ("alu", (isa.BPF_ALU, isa.BPF_MOD, isa.BPF_X, 0), _mod32_guard_64),
    "div32-guard-64": ("alu", (isa.BPF_ALU, isa.BPF_DIV, isa.BPF_X, 0), _div32_guard_64),
    "div64-guard-32": ("alu", (isa.BPF_ALU64, isa.BPF_DIV, isa.BPF_X, 0), _div64_guard_32),
}


@contextmanager
def width_planted(name: str) -> Iterator[list[int]]:
    """While active, the interpreter has the width bug ``name`` (WIDTH_PLANTS); yields its fired count."""
    from bpfdiff.interp import decode

    kind, key, wrong = WIDTH_PLANTS[name]
    table = decode.JUMP_FACTORIES if kind == "jump" else decode.ALU_FACTORIES
    right_factory = table[key]
    fired = [0]

    if kind == "jump":
        def factory(dst: int, src: int, imm: int, taken: int, nxt: int) -> Callable:
            right = right_factory(dst, src, imm, taken, nxt)

            def run(r: list, m) -> int:
                pc = taken if wrong(r[dst], r[src]) else nxt
                if pc != right(r, m):
                    fired[0] += 1
                return pc
            return run
    else:
        def factory(dst: int, src: int, imm: int, nxt: int) -> Callable:    # type: ignore[misc]
            right = right_factory(dst, src, imm, nxt)

            def run(r: list, m) -> int:
                a, b = r[dst], r[src]
                right(r, m)
                value = wrong(a, b) & M64
                if value != r[dst]:
                    fired[0] += 1
                    r[dst] = value
                return nxt
            return run

    table[key] = factory
    decode.decoded.clear()
    try:
        yield fired
    finally:
        table[key] = right_factory
        decode.decoded.clear()


def _observed(outcomes: list, r0_bits: int) -> list[tuple]:
    mask = (1 << r0_bits) - 1
    out = []
    for o in outcomes:
        run = o.run
        if run is None:
            out.append((o.kind, o.retval))
        else:
            out.append((run.r0 & mask, run.exit, run.mem, run.maps))
    return out


def plant_reaches_oracle(scenario: Scenario, profile: str, plant: Callable[[], AbstractContextManager[list[int]]]
                         ) -> dict[str, bool] | None:
    """Did the planted bug change what the oracle compares?  None: it never fired.

    ``plant()`` gives a context manager (:func:`planted`, :func:`width_planted`).
    ``r0_64``: R0 on 64 bits, exit, packet and maps (our engines); ``r0_32``:
    R0 on its low 32 bits (what the kernel engines return), exit, packet and maps.
    """
    from bpfdiff.engine import make_engine

    if not any(isinstance(e, Run) for e in scenario.events):
        return None
    clean = make_engine("interp", profile=profile).execute(scenario)
    with plant() as fired:
        dirty = make_engine("interp", profile=profile).execute(scenario)
    if not fired[0]:
        return None
    return {"r0_64": _observed(clean, 64) != _observed(dirty, 64),
            "r0_32": _observed(clean, 32) != _observed(dirty, 32)}
