"""The JIT engine's speed-ups change nothing it observes.

What is faster, and the reference each is held against:

* ``bpf_jit_comp.REUSE_INVARIANT_CODE``: the convergence passes and the
  final pass reuse the first pass's bytes of the slots no pass can change
  (ALU, loads, stores, ``lddw``) -- reference: every slot emitted in every
  pass, as the kernel does;
* ``emulator.NATIVE_CALLS``: hooks, small reads and translation-cache drops
  straight through libunicorn, images in host buffers mapped into the machine
  and written directly -- reference: the unicorn binding's public API and
  unicorn's own memory;
* one long-lived machine per engine: value blocks of the previous scenario
  reused when they have the same shape, the translations of the text that
  never changes (helpers, thunks) kept -- reference: a fresh engine for every
  scenario.

A fixed set of generated scenarios (every profile, planted bugs, all tail
calls indirect) runs through both; every outcome (R0, exit, faults, trace,
counts, maps, packet, self-check violations) and the images as they are in
memory after every event must be identical.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.generate import scenario_from_seed
from bpfdiff.jit import bpf_jit_comp, emulator
from bpfdiff.jit.emulator import Emulator, EntryPoint
from bpfdiff.jit.engine import JitEngine

from bpfdiff.engine import FAULT, FAULT_INVALID, EngineError
from bpfdiff.profiles import PROFILES

SEEDS = range(12)
CONFIGS = [(profile, frozenset(), {}) for profile in PROFILES] + [
    ("linux-6.1", frozenset({"poke-skip-delete"}), {}),
    ("linux-6.1", frozenset({"tail-call-limit-ja", "alu32-no-zext"}), {}),
    ("linux-5.5", frozenset({"poke-retarget-stale"}), {}),
    ("linux-6.1", frozenset(), {"force_indirect": True}),
]


def observe(engine: JitEngine, scenario) -> list:
    """Everything the engine shows for a scenario: each event's outcome and the code after it."""
    seen = []
    try:
        for inspection in engine.inspect(scenario):
            seen.append(inspection.outcome.to_json() if inspection.outcome is not None else None)
            seen.append(repr(inspection.programs))
    except EngineError as exc:
        seen.append(f"refused: {exc}")
    return seen


def reference(profile: str, bugs: frozenset[str], options: dict, scenario,
              monkeypatch: pytest.MonkeyPatch) -> list:
    with monkeypatch.context() as patch:
        patch.setattr(bpf_jit_comp, "REUSE_INVARIANT_CODE", False)
        patch.setattr(emulator, "NATIVE_CALLS", False)
        engine = JitEngine(profile, bugs, **options)
        try:
            return observe(engine, scenario)
        finally:
            engine.close()


@pytest.mark.parametrize(("profile", "bugs", "options"), CONFIGS,
                         ids=[f"{p}-{'+'.join(sorted(b)) or 'clean'}{'-indirect' if o else ''}"
                              for p, b, o in CONFIGS])
def test_fast_engine_observes_what_the_reference_does(profile: str, bugs: frozenset[str], options: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fast = JitEngine(profile, bugs, **options)       # one machine for every scenario, as in a campaign
    runs = 0
    for seed in SEEDS:
        scenario = scenario_from_seed(seed, profile)
        got = observe(fast, scenario)
        assert got == reference(profile, bugs, options, scenario, monkeypatch), f"seed {seed}"
        runs += sum(1 for item in got if isinstance(item, dict) and item.get("kind") == "run")
    assert runs >= len(SEEDS)      # the scenarios did run (not all refused)
    fast.close()


def test_the_reference_really_is_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The switches the comparison relies on select the other code."""
    monkeypatch.setattr(emulator, "NATIVE_CALLS", False)
    slow = Emulator(0)
    assert slow.native._lib is None and not slow.images.host_backed
    monkeypatch.setattr(emulator, "NATIVE_CALLS", True)
    fast = Emulator(0)
    assert fast.native._lib is not None and fast.images.host_backed
    # text written by the host is what the machine runs, and stays read-only for the program
    entry = entry_with_counter(fast)
    assert fast.run(entry, b"", 100).rax == 1
    fast.write_text(entry.bpf_func + 2, b"\x07")       # mov eax, 7
    assert fast.run(entry, b"", 100).rax == 7
    assert fast.read(entry.bpf_func, 7) == b"\x90\xb8\x07\x00\x00\x00\xc3"
    fn_plans = []
    real = bpf_jit_comp.do_jit

    def spy(fn, state):
        result = real(fn, state)
        fn_plans.append(fn.plan)
        return result

    monkeypatch.setattr(bpf_jit_comp, "do_jit", spy)
    scenario = scenario_from_seed(0, "linux-6.1")
    JitEngine().execute(scenario)
    assert fn_plans and all(plan is not None for plan in fn_plans)
    fn_plans.clear()
    monkeypatch.setattr(bpf_jit_comp, "REUSE_INVARIANT_CODE", False)
    JitEngine().execute(scenario)
    assert fn_plans and all(plan is None for plan in fn_plans)


# -- a hook that raises ------------------------------------------------------------------------
def entry_with_counter(emu: Emulator) -> EntryPoint:
    """nop; mov eax, 1; ret -- normal entry at the nop, 'prologue end' after it, with a counter slot."""
    code = b"\x90" + b"\xb8\x01\x00\x00\x00" + b"\xc3"
    emu.reset()
    base = emu.alloc_image(len(code))
    emu.install_image(base, code, "p", lambda addr: None)
    entry = EntryPoint("p", base, base + 0x100, base + 1, -8)
    emu.add_entry_point(entry)
    return entry


@pytest.mark.parametrize("native", [True, False])
def test_a_hook_that_raises_ends_the_run_as_a_fault(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator, "NATIVE_CALLS", native)
    emu = Emulator(0)
    entry = entry_with_counter(emu)
    assert emu.run(entry, b"", 100).rax == 1

    def broken(*args: object) -> None:
        raise RuntimeError("broken check")

    monkeypatch.setattr(emu, "_check_counter", broken)
    out = emu.run(entry, b"", 100)
    assert (out.exit, out.fault_kind) == (FAULT, FAULT_INVALID)
    assert out.fault_reason == "emulator hook failed: RuntimeError('broken check')"
    monkeypatch.undo()
    emu.close()


@pytest.mark.parametrize("native", [True, False])
def test_ctrl_c_in_a_hook_stops_the_run_and_propagates(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator, "NATIVE_CALLS", native)
    emu = Emulator(0)
    entry = entry_with_counter(emu)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(emu, "_check_counter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        emu.run(entry, b"", 100)
    monkeypatch.undo()
    assert emu.run(entry, b"", 100).rax == 1          # the machine is still usable
    emu.close()
