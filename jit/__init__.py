"""Port of the kernel's x86-64 eBPF JIT, run under unicorn (bpfdiff.jit)."""
