"""Scenario generation, the oracle and fuzzing front ends (bpfdiff.fuzz)."""
