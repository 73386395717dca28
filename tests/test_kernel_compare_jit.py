"""compare-jit on the real Debian 6.1 kernel: the fixture programs and an indirect tail call come
out identical after masking, every masked field resolved to the same thing on both sides.

Skipped, with the reason, when qemu-system-x86_64 is missing or the kernel cannot be set up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bpfdiff.compare_jit import (
    JMP_REL32,
    SymbolTable,
    as_loaded,
    compare_program,
    kernel_side,
    map_pointers,
    our_side,
    summary_lines,
)
from bpfdiff.engine import make_engine
from bpfdiff.scenario_text import parse_scenario, read_scenario

if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86): no real-kernel tests",
                allow_module_level=True)

from bpfdiff.kernel.engine import guest_for  # noqa: E402
from bpfdiff.kernel.guest import GuestError  # noqa: E402
from bpfdiff.kernel.image import DEFAULT_KERNEL, SetupError, setup  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "corpus" / "examples" / "direct_tail_call.scn"
# an indirect tail call (the key is read from a map value): 6.1 jumps through the retpoline thunk
INDIRECT = parse_scenario("""-- maps
jt prog_array key_size=4 value_size=4 max_entries=4
arr array key_size=4 value_size=8 max_entries=1
-- prog target
mov %r0, 42
exit
-- prog caller
lddw %r6, map_value:arr+0
ldxw %r3, [%r6+0]
lddw %r2, map:jt
call 12
mov %r0, 1
exit
""", "indirect.scn")


@pytest.fixture(scope="module")
def kernel():
    try:
        setup(DEFAULT_KERNEL)
        guest = guest_for(DEFAULT_KERNEL)
        symbols = SymbolTable.parse(guest.read_file("/proc/kallsyms").decode(errors="replace"))
    except (SetupError, GuestError) as exc:
        pytest.skip(f"real kernel unavailable: {exc}")
    return guest, symbols


@pytest.fixture(scope="module")
def jit():
    engine = make_engine("jit", profile="linux-6.1")
    yield engine
    engine.close()


def sides(kernel, jit, scenario):
    guest, symbols = kernel
    scenario = as_loaded(scenario)
    loaded = guest.load_programs(scenario, jit=True)
    assert [p.error for p in loaded] == [None] * len(loaded)
    theirs = kernel_side(scenario, loaded, symbols)
    return {p.name: our_side(jit, scenario, p.name) for p in scenario.programs}, theirs


def test_the_fixture_programs_are_identical_on_the_real_kernel(kernel, jit) -> None:
    ours, theirs = sides(kernel, jit, read_scenario(EXAMPLE))
    results = [compare_program(name, side, theirs) for name, side in ours.items()]
    for result in results:
        assert result.xlated is None and result.jited is None, (result.xlated, result.jited)
    assert summary_lines(results) == ["accepted 2/2 (100.0%)", "xlated identical 2/2 (100.0%)",
                                      "jited identical 2/2 (100.0%)"]


def test_an_indirect_tail_call_is_identical_and_its_thunk_and_map_value_resolve(kernel, jit) -> None:
    from bpfdiff.jit.dump import jited_lines

    ours, theirs = sides(kernel, jit, INDIRECT)
    result = compare_program("caller", ours["caller"], theirs)
    assert result.xlated is None and result.jited is None, (result.xlated, result.jited)
    for side in (ours["caller"], theirs):
        (function,) = side.functions["caller"]
        targets = [side.describe(function.base + line.offset + 5 + int.from_bytes(line.raw[1:], "little",
                                                                                  signed=True))
                   for line in jited_lines(function.code) if len(line.raw) == 5 and line.raw[0] == JMP_REL32]
        assert "__x86_indirect_thunk_rcx" in targets, (side.name, targets)
    # the pointers of both sides resolved to the same maps (the kernel's through its xlated map ids)
    for side in (ours["caller"], theirs):
        assert sorted(map_pointers("caller", side).values()) == ["map:jt", "map_value:arr+0x0"]
