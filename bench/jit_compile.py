"""JIT compile time: milliseconds per compile of a 50-instruction program.

    .venv/bin/python bench/jit_compile.py [--repeat N]

The program alternates ``add rK, imm`` and a conditional jump (24 times), so
``bpf_int_jit_compile`` has to iterate its size-convergence passes as the
kernel does.  Target: under 5 ms per compile on one core (the JIT compile is
about a quarter of a differential fuzzing pass, see bench/throughput.py).
"""

from __future__ import annotations

import argparse
import time

from bpfdiff.jit.bpf_jit_comp import JitEnv, JitOptions, bpf_int_jit_compile

from bpfdiff import isa
from bpfdiff.isa import Insn, Program
from bpfdiff.profiles import PROFILES


def program() -> Program:
    insns = []
    for k in range(24):
        insns += [Insn(isa.BPF_ALU64 | isa.BPF_ADD | isa.BPF_K, k % 5, 0, 0, k * 300),
                  Insn(isa.BPF_JMP | isa.BPF_JGT | isa.BPF_X, 1, 2, 1, 0)]
    insns += [Insn(isa.BPF_ALU64 | isa.BPF_MOV | isa.BPF_K, 0, 0, 0, 0), Insn(isa.EXIT_OPCODE)]
    return Program("p", tuple(insns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    next_addr = [0x7FFF_A000_0000]

    def alloc(size: int) -> int:
        addr = next_addr[0]
        next_addr[0] += (size + 15) & ~15
        return addr

    env = JitEnv(alloc_image=alloc, helper_addr=lambda i: 0x7FFF_8100_0000 + 8 * i,
                 map_addr=lambda m: 0x7888_8000_0000, map_value_addr=lambda m: 0x7888_8000_0110)
    prog = program()
    for name, profile in PROFILES.items():
        bpf_int_jit_compile(prog, {}, profile, env, JitOptions(), lambda m, k: None)   # warm up
        start = time.perf_counter()
        for _ in range(args.repeat):
            bpf_int_jit_compile(prog, {}, profile, env, JitOptions(), lambda m, k: None)
        per = (time.perf_counter() - start) / args.repeat
        print(f"{name}: {per * 1000:.2f} ms per 50-insn compile ({args.repeat} compiles)")


if __name__ == "__main__":
    main()
