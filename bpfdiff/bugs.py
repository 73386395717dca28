"""Planted bugs: switchable faults in the engines, each modelled on a real kernel bug.

They are how we know the fuzzer works: with one switched on, ``bpfdiff fuzz
--inject NAME`` must find a divergence.  All are off by default.  An engine
receives the set of enabled names (``make_engine(..., bugs=frozenset(...))``)
and consults it at the one place the bug lives; the table below is the only
list of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bug:
    name: str
    engine: str          # "jit" or "interp": where the switch lives
    summary: str         # one line, for `bpfdiff bugs`
    modelled_on: str     # the kernel history it imitates
    profiles: tuple[str, ...] = ("linux-6.1", "linux-5.5")  # where it changes behaviour


BUGS: tuple[Bug, ...] = (
    Bug(
        "tail-call-limit-ja",
        "jit",
        "JIT tests the tail-call counter with `ja` instead of `jae`: one tail call too many (34 on linux-6.1)",
        "x86-64 JIT vs interpreter off-by-one of 2021 (b61a28cf11d6 / ebf7f6f0a6cd)",
        ("linux-6.1",),
    ),
    Bug(
        "poke-skip-delete",
        "jit",
        "map_poke_run ignores deletes: a direct tail-call site keeps jumping to the removed program",
        "stale direct jump after prog-array delete (poke descriptor not re-patched)",
    ),
    Bug(
        "poke-retarget-stale",
        "jit",
        "map_poke_run skips jmp->jmp re-patching: a retargeted slot keeps running the old program",
        "retarget that keeps the old target (old == new check on the wrong address)",
    ),
    Bug(
        "tail-call-offset",
        "jit",
        "the tail-call jump lands at the wrong offset into the target (prologue size miscounted)",
        "X86_TAIL_CALL_OFFSET / adj_off out of step with emit_prologue (e.g. the IBT endbr change)",
    ),
    Bug(
        "subprog-counter-reset",
        "jit",
        "bpf-to-bpf calls start the callee with a zero tail-call counter: the limit is exceeded via subprograms",
        "tail_call_cnt not propagated through rax across subprogram calls (tailcall hierarchy fixes)",
        ("linux-6.1",),
    ),
    Bug(
        "alu32-no-zext",
        "jit",
        "a 32-bit ALU op with a register source is emitted in its 64-bit form: the upper half is not zeroed",
        "missing zero extension of 32-bit subregister writes (verifier zext / JIT bugs)",
    ),
    Bug(
        "interp-tail-call-limit",
        "interp",
        "the interpreter stops one tail call early (32 instead of 33)",
        "b61a28cf11d6 'Fix off-by-one in tail call count limiting' (interpreter only, 2021)",
    ),
)

BUGS_BY_NAME: dict[str, Bug] = {bug.name: bug for bug in BUGS}


def validate_bugs(names: frozenset[str] | set[str] | tuple[str, ...]) -> frozenset[str]:
    """Check bug names; return them as a frozenset."""
    unknown = sorted(set(names) - set(BUGS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown bug {', '.join(unknown)} (see `bpfdiff bugs`)")
    return frozenset(names)


def bugs_for(engine: str, names: frozenset[str]) -> frozenset[str]:
    """The enabled bugs that live in ``engine``."""
    return frozenset(n for n in names if BUGS_BY_NAME[n].engine == engine)
