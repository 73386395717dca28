"""bpfdiff: differential testing of eBPF JITs against a reference interpreter."""
