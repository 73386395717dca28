"""bpfdiff.memo: bounded memos, identity memos, and forgetting every remembered answer."""

from __future__ import annotations

import functools

from bpfdiff.fuzz.generate import scenario_from_seed
from bpfdiff.interp import decode

from bpfdiff import memo, verifier
from bpfdiff.isa import Insn, Program
from bpfdiff.profiles import get_profile


def test_a_full_memo_starts_over_and_keeps_the_newest_answer() -> None:
    m: memo.Memo[int, str] = memo.Memo(3)
    for key in range(3):
        assert m.remember(key, str(key)) == str(key)
    assert dict(m) == {0: "0", 1: "1", 2: "2"}
    assert m.remember(3, "3") == "3"
    assert dict(m) == {3: "3"}


def test_an_identity_memo_answers_only_for_the_very_same_object() -> None:
    made: list[Program] = []

    def make(prog: Program) -> int:
        made.append(prog)
        return len(made)

    by_identity = memo.IdentityMemo(make, 8)
    a = Program("p", (Insn(0xb7, 0, 0, 0, 1), Insn(0x95)))
    b = Program("p", (Insn(0xb7, 0, 0, 0, 1), Insn(0x95)))
    assert a == b and a is not b
    assert by_identity(a) == 1
    assert by_identity(a) == 1              # remembered
    assert by_identity(b) == 2              # equal, not the same: made again
    by_identity.clear()
    assert by_identity(a) == 3
    assert made == [a, b, a]


def test_forget_all_empties_memos_caches_and_calls_forgetting_functions() -> None:
    m: memo.Memo[str, int] = memo.Memo(4)
    m.remember("x", 1)
    calls = []

    @memo.forgettable
    @functools.cache
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    forgotten = []
    memo.forgettable(lambda: forgotten.append(True))
    square(3)
    square(3)
    assert calls == [3]
    memo.forget_all()
    assert not m and forgotten == [True]
    square(3)
    assert calls == [3, 3]


def test_forget_all_makes_the_verifier_model_and_the_decoder_run_again() -> None:
    scenario = scenario_from_seed(5, "linux-6.1")
    prog = scenario.programs[0]
    maps = {m.name: m for m in scenario.maps}
    verifier.verify(prog, maps, get_profile("linux-6.1"), prog_type=scenario.prog_type)
    code = decode.decoded(prog)
    assert decode.decoded(prog) is code
    misses = verifier._verified.cache_info().misses
    verifier.verify(prog, maps, get_profile("linux-6.1"), prog_type=scenario.prog_type)
    assert verifier._verified.cache_info().misses == misses      # answered from memory
    memo.forget_all()
    assert verifier._verified.cache_info().currsize == 0
    verifier.verify(prog, maps, get_profile("linux-6.1"), prog_type=scenario.prog_type)
    assert verifier._verified.cache_info().misses == 1
    assert decode.decoded(prog) is not code
