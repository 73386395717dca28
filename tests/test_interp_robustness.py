"""Whatever passes the loader, the interpreter answers with a result, never a Python exception."""

from bpfdiff.interp.engine import InterpEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfdiff.engine import EngineError
from bpfdiff.isa import EXIT_OPCODE, Insn, Program
from bpfdiff.scenario import PROG_RAW, MapDef, Run, Scenario, Update, key_u32

ENGINE = InterpEngine(budget=2_000)
MAPS = (MapDef("arr", "array", 4, 8, 2), MapDef("h", "hash", 4, 8, 2), MapDef("jt", "prog_array", 4, 4, 2))

regs = st.integers(0, 10)
small_off = st.one_of(st.integers(-3, 3), st.sampled_from([-8, -16, -512, -520, 0, 8]))
imms = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, 31, 32, 63, 64, -1, -(1 << 31)]),
                 st.integers(-(1 << 31), (1 << 31) - 1))
ALU_OPS = [0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0, 0xB0, 0xC0]


@st.composite
def alu(draw):
    cls, op, source = draw(st.sampled_from([0x04, 0x07])), draw(st.sampled_from(ALU_OPS)), draw(st.sampled_from([0, 8]))
    off = 0
    if op in (0x30, 0x90):
        off = draw(st.sampled_from([0, 1]))
    elif op == 0xB0 and source:
        off = draw(st.sampled_from([0, 8, 16] + ([32] if cls == 0x07 else [])))
    dst = draw(st.integers(0, 9))
    if source:
        return Insn(cls | op | 8, dst, draw(regs), off, 0)
    return Insn(cls | op, dst, 0, off, draw(imms))


@st.composite
def special_alu(draw):
    cls, dst = draw(st.sampled_from([0x04, 0x07])), draw(st.integers(0, 9))
    if draw(st.booleans()):
        return Insn(cls | 0x80, dst)
    source = draw(st.sampled_from([0, 8])) if cls == 0x04 else 0
    return Insn(cls | 0xD0 | source, dst, 0, 0, draw(st.sampled_from([16, 32, 64])))


@st.composite
def jump(draw):
    cls, op, source = draw(st.sampled_from([0x05, 0x06])), draw(st.sampled_from(
        [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0, 0xC0, 0xD0])), draw(st.sampled_from([0, 8]))
    off = draw(st.integers(-3, 3))
    if source:
        return Insn(cls | op | 8, draw(regs), draw(regs), off, 0)
    return Insn(cls | op, draw(regs), 0, off, draw(imms))


@st.composite
def memory(draw):
    size = draw(st.sampled_from([0x00, 0x08, 0x10, 0x18]))
    kind = draw(st.sampled_from(["ldx", "ldxsx", "st", "stx", "atomic"]))
    off = draw(small_off)
    if kind == "ldx":
        return Insn(0x61 | size, draw(st.integers(0, 9)), draw(regs), off)
    if kind == "ldxsx" and size != 0x18:
        return Insn(0x81 | size, draw(st.integers(0, 9)), draw(regs), off)
    if kind == "st":
        return Insn(0x62 | size, draw(regs), 0, off, draw(imms))
    if kind == "atomic":
        return Insn(0xC3 | draw(st.sampled_from([0x00, 0x18])), draw(regs), draw(st.integers(0, 9)), off,
                    draw(st.sampled_from([0x00, 0x40, 0x50, 0xA0, 0x01, 0x41, 0x51, 0xA1, 0xE1, 0xF1])))
    return Insn(0x63 | size, draw(regs), draw(regs), off)


calls = st.one_of(
    st.builds(lambda imm: Insn(0x85, 0, 0, 0, imm), st.sampled_from([1, 2, 3, 7, 8, 12, 5])),
    st.builds(lambda imm: Insn(0x85, 0, 1, 0, imm), st.integers(-4, 4)),
    st.just(Insn(EXIT_OPCODE)),
    st.builds(lambda dst, name: Insn(0x18, dst, 1, 0, 0, name), st.sampled_from([1, 2]),
              st.sampled_from(["arr", "h", "jt"])),
)
insns = st.one_of(alu(), alu(), special_alu(), jump(), memory(), memory(), calls)


def flatten(body: list[Insn]) -> list[Insn]:
    """Pseudo map loads take two slots."""
    out = []
    for insn in body:
        out.append(insn)
        if insn.opcode == 0x18:
            out.append(Insn(0))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.lists(insns, min_size=1, max_size=12), mem=st.binary(max_size=16))
def test_random_programs_never_crash_the_interpreter(body, mem):
    prog = Program("p", (*flatten(body), Insn(0xB7, 0, 0, 0, 0), Insn(EXIT_OPCODE)))
    scenario = Scenario(prog_type=PROG_RAW, maps=MAPS, programs=(prog,),
                        events=(Update("jt", key_u32(0), "p"), Run("p", mem)))
    try:
        outcomes = ENGINE.execute(scenario)
    except EngineError:
        return
    run = outcomes[-1].run
    assert run.exit in ("exit", "fault", "timeout")
    assert 0 <= run.r0 < 1 << 64
    if run.exit == "fault":
        assert run.fault_kind and run.fault_prog == "p" and 0 <= run.fault_pc < len(prog.insns) + 1
