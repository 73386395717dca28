"""The JIT engine's speed-ups change nothing it observes.

What is faster, and the reference each is held against:

* ``bpf_jit_comp.REUSE_INVARIANT_CODE``: the final pass reuses the bytes of
  the slots no pass can change (ALU, loads, stores, ``lddw``), emitted once,
  and the passes before it are run on sizes alone (``converge``: only jumps
  change size) -- reference: every slot emitted in every pass, as the kernel
  does (the sizes alone give its pass count, addrs[] and labels, also with padding from an
  early pass on: ``test_size_passes_converge_as_the_emitted_passes``);
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


# -- the passes before the image, on sizes -----------------------------------------------------
@pytest.mark.parametrize("padding_from", [1, 3, bpf_jit_comp.PADDING_PASSES])
def test_size_passes_converge_as_the_emitted_passes(padding_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """converge (the passes before the image on sizes alone) ends where the kernel's loop, every slot
    emitted in every pass, ends: the same length, addrs[], labels and pass count, or the same error.
    Padding from an early pass on (the kernel's starts after 15, which generated programs never
    reach) holds the padded choices to it too."""
    monkeypatch.setattr(bpf_jit_comp, "PADDING_PASSES", padding_from)
    real = bpf_jit_comp.converge
    passes: list[int] = []

    def outcome(run, fn):
        try:
            return run(fn)
        except bpf_jit_comp.JitError as exc:
            return exc

    def checked(fn: bpf_jit_comp.FuncJit):
        done = outcome(real, fn)
        with monkeypatch.context() as patch:
            patch.setattr(bpf_jit_comp, "REUSE_INVARIANT_CODE", False)
            emitted = outcome(bpf_jit_comp.emit_passes, fn)
        if isinstance(emitted, Exception):
            assert repr(done) == repr(emitted)
            raise done
        code, addrs, ctx, count = emitted
        assert (done.proglen, done.addrs, done.ctx, done.passes) == (len(code), addrs, ctx, count)
        passes.append(count)
        return done

    monkeypatch.setattr(bpf_jit_comp, "converge", checked)
    for profile, bugs, options in CONFIGS:
        engine = JitEngine(profile, bugs, **options)
        for seed in range(6):
            try:
                engine.execute(scenario_from_seed(seed, profile))
            except EngineError:
                pass
        engine.close()
    # (a padded pass keeps every size: the loop ends right after the first one)
    longest = max(passes)
    assert len(passes) > 100 and min(padding_from + 1, 4) <= longest <= padding_from + 1


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
