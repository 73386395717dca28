"""Reference interpreter with the kernel's semantics (bpfdiff.interp)."""
