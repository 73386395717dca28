"""Decoding: once per Program object, one closure per slot, refusals at load."""

import pytest
from bpfdiff.interp.decode import decode_program, decoded
from bpfdiff.interp.engine import InterpEngine

from bpfdiff.engine import EngineError
from bpfdiff.isa import BPF_JA, BPF_JMP, EXIT_OPCODE, Insn, Program, lddw_pair
from bpfdiff.scenario import PROG_RAW, Run, Scenario


def test_decoded_once_per_program_object():
    prog = Program("p", (Insn(0xB7, 0, 0, 0, 1), Insn(EXIT_OPCODE)))
    assert decoded(prog) is decoded(prog)
    same_text = Program("p", prog.insns)
    assert decoded(same_text) is not decoded(prog)      # cached by object, not by value
    # one closure per slot (lddw: two) plus the fell-off-the-end guard
    with_lddw = Program("q", (*lddw_pair(0, 7), Insn(EXIT_OPCODE)))
    assert len(decode_program(with_lddw)) == 4


def test_jump_into_the_middle_of_lddw_is_refused():
    insns = (Insn(BPF_JMP | BPF_JA, 0, 0, 1), *lddw_pair(0, 7), Insn(EXIT_OPCODE))
    scenario = Scenario(prog_type=PROG_RAW, programs=(Program("p", insns),), events=(Run("p"),))
    with pytest.raises(EngineError, match="middle of ldimm64"):
        InterpEngine().execute(scenario)
