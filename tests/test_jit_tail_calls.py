"""Tail calls through the JIT engine: limits, chains, re-patching on update/delete/retarget.

Independent facts used here:

* both profiles allow exactly 33 tail calls (reference README: 6.1 measured
  1 + 33 entries; 5.5 ``cmp $0x20; ja``), so a self loop enters 34 times;
* linux-6.1 image of the seed program (``linux-6.1-jit-fixtures.md``): 63
  bytes, bypass ``jmp +6`` at offset 44, site at offset 50; filled slot:
  bypass nop5 and site ``jmp`` to the target + 11 (X86_TAIL_CALL_OFFSET);
* linux-5.5 image of the same program (the seed commit's "After" listings):
  0x4d bytes, the site at 0x39, ``jmpq`` to the target + 0x19 while filled,
  ``nopl`` when deleted.
"""

from __future__ import annotations

import pytest
from bpfdiff.jit.engine import JitEngine
from raw_scenarios import parse_raw

from bpfdiff.engine import EXIT

NOP5 = bytes.fromhex("0f1f440000")
PROFILES = ("linux-6.1", "linux-5.5")
TAIL_CALL_OFFSET = {"linux-6.1": 11, "linux-5.5": 0x19}
# (site offset, bypass offset or None, image length) of the seed program, from the listings
SEED_LAYOUT = {"linux-6.1": (50, 44, 63), "linux-5.5": (0x39, None, 0x4D)}


def jmp(site: int, target: int) -> bytes:
    return b"\xe9" + (target - (site + 5)).to_bytes(4, "little", signed=True)


@pytest.fixture(scope="module", params=PROFILES)
def engine(request: pytest.FixtureRequest) -> JitEngine:
    return JitEngine(profile=request.param)


SEED = """
-- maps
jmp_table prog_array key_size=4 value_size=4 max_entries=4
-- prog target
mov %r0, 42
exit
-- prog other
mov %r0, 43
exit
-- prog caller
mov %r3, 0
lddw %r2, map:jmp_table
call 12
mov %r0, 1
exit
"""


def seed_scenario(events: str) -> object:
    return parse_raw(SEED + "-- events\n" + events)


def check_seed_site(engine: JitEngine, target: str | None) -> None:
    """The caller's image bytes at the site (and bypass) for the slot's current program."""
    profile = engine.profile.name
    site_off, bypass_off, length = SEED_LAYOUT[profile]
    image = engine.image_bytes("caller")
    assert len(image) == length
    base = engine.programs["caller"].bpf_func
    if target is None:
        assert image[site_off:site_off + 5] == NOP5
        if bypass_off is not None:
            # jmp over the pop rax and the site: to the byte after the site
            assert image[bypass_off:bypass_off + 5] == jmp(base + bypass_off, base + site_off + 5)
    else:
        dest = engine.programs[target].bpf_func + TAIL_CALL_OFFSET[profile]
        assert image[site_off:site_off + 5] == jmp(base + site_off, dest)
        if bypass_off is not None:
            assert image[bypass_off:bypass_off + 5] == NOP5


def test_seed_program_update_run_delete_run(engine: JitEngine) -> None:
    scenario = seed_scenario("run caller\nupdate jmp_table 0 prog:target\nrun caller\n"
                             "delete jmp_table 0\nrun caller\nupdate jmp_table 0 prog:target\nrun caller\n")
    engine.start(scenario)
    expected = [  # (slot afterwards, r0, trace)
        (None, 1, ("caller",)),
        ("target", None, None),
        ("target", 42, ("caller", "target")),
        (None, None, None),
        (None, 1, ("caller",)),
        ("target", None, None),
        ("target", 42, ("caller", "target")),
    ]
    check_seed_site(engine, None)
    for index, (event, (slot, r0, trace)) in enumerate(zip(scenario.events, expected, strict=True)):
        outcome = engine.apply(index, event)
        assert outcome.violations == ()
        check_seed_site(engine, slot)
        if r0 is not None:
            assert outcome.run.exit == EXIT
            assert (outcome.run.r0, outcome.run.trace, outcome.run.tail_calls) == (r0, trace, len(trace) - 1)
        else:
            assert outcome.retval == 0


def test_retarget_repatches_the_site_from_one_program_to_another(engine: JitEngine) -> None:
    scenario = seed_scenario("update jmp_table 0 prog:target\nrun caller\n"
                             "update jmp_table 0 prog:other\nrun caller\n")
    engine.start(scenario)
    outcomes = []
    for index, event in enumerate(scenario.events):
        outcomes.append(engine.apply(index, event))
        if index == 0:
            check_seed_site(engine, "target")
    check_seed_site(engine, "other")
    assert [o.run.r0 for o in outcomes if o.run] == [42, 43]
    assert outcomes[3].run.trace == ("caller", "other")
    assert all(o.violations == () for o in outcomes)


def test_load_after_the_slot_is_filled_patches_at_load(engine: JitEngine) -> None:
    scenario = parse_raw(SEED.replace("-- prog caller", "-- prog late") + """-- events
update jmp_table 0 prog:target
load late
run late
delete jmp_table 0
run late
""")
    engine.start(scenario)
    outcomes = [engine.apply(i, e) for i, e in enumerate(scenario.events)]
    assert [o.run.r0 for o in outcomes if o.run] == [42, 1]
    assert all(o.violations == () for o in outcomes)


SELF_LOOP = """
-- maps
jt prog_array key_size=4 value_size=4 max_entries=2
counters array key_size=4 value_size=8 max_entries=1
-- prog loop
mov %r6, %r1
stw [%r10-4], 0
mov %r2, %r10
add %r2, -4
lddw %r1, map:counters
call 1
jeq %r0, 0, out
ldxdw %r1, [%r0+0]
add %r1, 1
stxdw [%r0+0], %r1
mov %r1, %r6
{key}
lddw %r2, map:jt
call 12
out:
mov %r0, 7
exit
-- events
update jt 0 prog:loop
run loop mem=00 00 00 00
run loop mem=00 00 00 00
delete jt 0
run loop mem=00 00 00 00
"""


@pytest.mark.parametrize("key", ["mov %r3, 0", "ldxw %r3, [%r1+0]"], ids=["direct", "indirect"])
def test_self_loop_stops_after_exactly_33_tail_calls(engine: JitEngine, key: str) -> None:
    scenario = parse_raw(SELF_LOOP.replace("{key}", key))
    outcomes = engine.execute(scenario)
    first, second, third = (o.run for o in outcomes if o.run)
    for run, entries_so_far in ((first, 34), (second, 68)):
        assert (run.exit, run.r0, run.tail_calls) == (EXIT, 7, 33)
        assert run.trace == ("loop",) * 34
        counters = dict(run.maps)["counters"]
        assert counters == (("00000000", entries_so_far.to_bytes(8, "little").hex()),)
    assert (third.tail_calls, third.trace) == (0, ("loop",))
    assert all(o.violations == () for o in outcomes)


PING_PONG = """
-- maps
jt prog_array key_size=4 value_size=4 max_entries=2
-- prog ping
{ping_key}
lddw %r2, map:jt
call 12
mov %r0, 1
exit
-- prog pong
mov %r3, 0
lddw %r2, map:jt
call 12
mov %r0, 2
exit
-- events
update jt 0 prog:ping
update jt 1 prog:pong
run ping mem=01 00 00 00
"""


@pytest.mark.parametrize("ping_key", ["mov %r3, 1", "ldxw %r3, [%r1+0]"], ids=["direct", "indirect"])
def test_two_program_chain_shares_one_counter(engine: JitEngine, ping_key: str) -> None:
    outcomes = engine.execute(parse_raw(PING_PONG.replace("{ping_key}", ping_key)))
    run = outcomes[-1].run
    # 34 entries alternating ping, pong, ...; the 34th (pong) falls through and returns 2
    assert run.trace == ("ping", "pong") * 17
    assert (run.exit, run.r0, run.tail_calls) == (EXIT, 2, 33)
    assert all(o.violations == () for o in outcomes)


def test_out_of_range_and_empty_slots_fall_through(engine: JitEngine) -> None:
    scenario = parse_raw(PING_PONG.replace("{ping_key}", "ldxw %r3, [%r1+0]").replace(
        "run ping mem=01 00 00 00", "run ping mem=05 00 00 00\ndelete jt 1\nrun ping mem=01 00 00 00"))
    outcomes = engine.execute(scenario)
    runs = [o.run for o in outcomes if o.run]
    assert [(r.r0, r.trace) for r in runs] == [(1, ("ping",)), (1, ("ping",))]


def test_force_indirect_has_no_sites_and_same_results() -> None:
    for profile in PROFILES:
        engine = JitEngine(profile=profile, force_indirect=True)
        scenario = seed_scenario("update jmp_table 0 prog:target\nrun caller\ndelete jmp_table 0\nrun caller\n")
        outcomes = engine.execute(scenario)
        assert [o.run.r0 for o in outcomes if o.run] == [42, 1]
        assert all(not image.pokes for prog in engine.programs.values() for image in prog.images)


def test_planted_poke_skip_delete_is_caught_by_the_patch_invariant() -> None:
    for profile in PROFILES:
        engine = JitEngine(profile=profile, bugs=frozenset({"poke-skip-delete"}))
        scenario = seed_scenario("update jmp_table 0 prog:target\ndelete jmp_table 0\nrun caller\n")
        outcomes = engine.execute(scenario)
        assert outcomes[0].violations == ()
        assert outcomes[1].violations, "the stale jmp after a delete must be reported"
        assert outcomes[2].run.r0 == 42       # the stale site still jumps to the deleted program


def test_planted_retarget_stale_keeps_running_the_old_program() -> None:
    engine = JitEngine(bugs=frozenset({"poke-retarget-stale"}))
    outcomes = engine.execute(seed_scenario("update jmp_table 0 prog:target\nupdate jmp_table 0 prog:other\n"
                                            "run caller\n"))
    assert outcomes[1].violations
    assert outcomes[2].run.r0 == 42


def test_planted_ja_limit_takes_one_tail_call_too_many() -> None:
    engine = JitEngine(profile="linux-6.1", bugs=frozenset({"tail-call-limit-ja"}))
    run = engine.execute(parse_raw(SELF_LOOP.replace("{key}", "mov %r3, 0")))[1].run
    assert (run.tail_calls, len(run.trace)) == (34, 35)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("retpoline", [True, False], ids=["retpoline", "plain-jmp"])
def test_indirect_self_loop_with_and_without_retpoline(profile: str, retpoline: bool) -> None:
    engine = JitEngine(profile=profile, retpoline=retpoline, force_indirect=True)
    outcomes = engine.execute(parse_raw(SELF_LOOP.replace("{key}", "mov %r3, 0")))
    run = outcomes[1].run
    assert (run.exit, run.r0, run.tail_calls, len(run.trace)) == (EXIT, 7, 33, 34)
    assert all(o.violations == () for o in outcomes)


# linux-6.1-jit-fixtures.md, program A, as captured from Debian's 6.1 kernel:
# MAP = the 8-byte map address, JMP = the site's `jmp rel32` once slot 0 is filled.
FIXTURE_61_EMPTY = ("0f1f440000 31c0 55 4889e5 50 48be MAP 31d2 8b85fcffffff 83f821 7314 83c001 "
                    "8985fcffffff e906000000 58 0f1f440000 b801000000 c9 c3 cc")
FIXTURE_61_FILLED = ("0f1f440000 31c0 55 4889e5 50 48be MAP 31d2 8b85fcffffff 83f821 7314 83c001 "
                     "8985fcffffff 0f1f440000 58 JMP b801000000 c9 c3 cc")


def fixture_bytes(text: str, map_addr: int, jmp: bytes = b"") -> bytes:
    return bytes.fromhex(text.replace("MAP", map_addr.to_bytes(8, "little").hex()).replace("JMP", jmp.hex())
                         .replace(" ", ""))


def test_61_image_in_emulated_memory_is_the_fixture_through_update_and_delete() -> None:
    engine = JitEngine(profile="linux-6.1")
    # the fixture's program A loads the map before the key
    scenario = parse_raw(SEED.replace("mov %r3, 0\nlddw %r2, map:jmp_table", "lddw %r2, map:jmp_table\nmov %r3, 0")
                              + "-- events\nupdate jmp_table 0 prog:target\ndelete jmp_table 0\n")
    engine.start(scenario)
    map_addr = engine.map_struct["jmp_table"]
    base = engine.programs["caller"].bpf_func
    empty = fixture_bytes(FIXTURE_61_EMPTY, map_addr)
    assert engine.image_bytes("caller") == empty
    engine.apply(0, scenario.events[0])
    site = base + 50
    filled = fixture_bytes(FIXTURE_61_FILLED, map_addr, jmp(site, engine.programs["target"].bpf_func + 11))
    assert engine.image_bytes("caller") == filled
    engine.apply(1, scenario.events[1])
    assert engine.image_bytes("caller") == empty
    # program B, the target: never patched
    assert engine.image_bytes("target") == fixture_bytes("0f1f440000 6690 55 4889e5 b82a000000 c9 c3 cc", map_addr)


@pytest.mark.parametrize("profile", PROFILES)
def test_planted_tail_call_offset_breaks_the_patch_invariant(profile: str) -> None:
    engine = JitEngine(profile=profile, bugs=frozenset({"tail-call-offset"}))
    outcomes = engine.execute(seed_scenario("update jmp_table 0 prog:target\nrun caller\n"))
    assert outcomes[0].violations and "tail-call site" in outcomes[0].violations[0]
    assert outcomes[1].run.trace != ("caller", "target") or outcomes[1].run.r0 != 42
