"""``JitEngine``: scenarios through the x86-64 JIT port, executed under unicorn.

One :class:`~bpfdiff.jit.emulator.Emulator` per engine, reused for every
scenario.  Per scenario the engine

* lays out the kernel objects the generated code reads, at the profile's
  offsets: a ``struct bpf_array`` per prog array (``map.max_entries``,
  ``ptrs[]`` of ``struct bpf_prog *``) and per array map, a header per hash
  map, a guarded block of values per array and hash map, and a ``struct
  bpf_prog`` per program (``bpf_func``);
* JITs each program once, when it is loaded (up front, or at its Load event
  so that ``bpf_tail_call_direct_fixup`` sees the slots as they are then),
  and copies its images into emulated memory;
* for an xdp scenario, before each run writes the ``struct xdp_buff`` R1
  points at (``data``/``data_meta`` at the packet, ``data_end`` after it,
  ``data_hard_start`` ``XDP_PACKET_HEADROOM`` before it), its
  ``xdp_rxq_info`` (queue 0) and ``net_device`` (the loopback's ifindex 1)
  at the profile's offsets (:class:`~bpfdiff.profiles.XdpLayout`), the
  layout the verifier's context rewrite reads, as ``bpf_prog_test_run_xdp``
  sets it up;
* applies map events through :mod:`bpfdiff.maps`; a prog-array slot change
  first exchanges the ``ptrs[]`` entry and then re-patches every direct
  tail-call site through :func:`bpfdiff.jit.poke.map_poke_run`, the order of
  the kernel's ``bpf_fd_array_map_update_elem`` / ``fd_array_map_delete_elem``
  (``xchg`` of the slot, then ``map_poke_run`` under ``poke_mutex``);
* after every map and load event checks the patch invariant of each stable poke site
  (``jmp`` to the slot's program + the profile's tail-call offset iff the slot is filled,
  else ``nop5``; with a bypass, the bypass the other way round) and reports
  breaches as :attr:`EventOutcome.violations`.

Tail calls in a result: ``tail_calls`` is the number of tail-call jumps the
trace hooks saw taken (at each direct poke site holding a ``jmp`` and each
indirect jump; see :mod:`bpfdiff.jit.emulator`), the interpreter's measure
too.  The counter the JIT keeps is larger when calls went through empty slots
(the kernel counts an attempt before reading the slot); at every program
entry it is cross-checked not to be *smaller* than the tail calls taken.
Once a subprogram has tail-called, the check stops: the 6.1 JIT passes
subprograms a *copy* of the counter, so the main frame's counter no longer
counts every tail call of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bpfdiff.interp.engine import check_run_input
from bpfdiff.jit.bpf_jit_comp import JitEnv, JitOptions, JitProgram, bpf_int_jit_compile, retpoline_thunk
from bpfdiff.jit.emulator import HELPER_BASE, THUNK_BASE, THUNK_SLOT, XDP_CTX_BASE, Emulator, EntryPoint
from bpfdiff.jit.poke import PokeDescriptor, map_poke_run
from bpfdiff.jit.xlate import htab_value_offset

from bpfdiff import isa, xdp
from bpfdiff.bugs import bugs_for, validate_bugs
from bpfdiff.engine import (
    DEFAULT_BUDGET,
    FAULT_MEMORY,
    Engine,
    EngineError,
    EventOutcome,
    ImageCode,
    Inspection,
    MapContents,
    PokeSite,
    ProgramCode,
    ProgramRefused,
    RunResult,
)
from bpfdiff.helpers import SMP_PROCESSOR_ID, HelperFault, Prandom, call_helper, kernel_symbol
from bpfdiff.isa import Program
from bpfdiff.maps import (
    BpfMap,
    MapDefinitionError,
    ProgArrayMap,
    check_map_def,
    create_map,
    value_region_size,
)
from bpfdiff.profiles import Profile, get_profile
from bpfdiff.scenario import PROG_TYPES, PROG_XDP, Delete, Event, Load, MapDef, Run, Scenario, Update
from bpfdiff.verifier import VerifierError, subprog_r0_trust_matters

NOP5 = bytes.fromhex("0f1f440000")
# x86 register numbers 0-15, as the kernel names its retpoline thunks
X86_REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
            "r14", "r15")
STRUCT_BPF_PROG_SIZE = 0x100      # room for the fields up to bpf_func and beyond; only bpf_func is read
# Within the XDP_CTX_BASE page: where the xdp_buff's rxq info and device live.
XDP_RXQ_INFO = XDP_CTX_BASE + 0x40
XDP_NET_DEVICE = XDP_CTX_BASE + 0x200
HASH_MAP_HEADER_SIZE = 0x100      # struct bpf_htab: nothing in it is read by generated code


def jmp_rel32(site: int, target: int) -> bytes:
    """``jmp rel32`` at ``site`` to ``target`` (e9 + displacement from the next instruction)."""
    return b"\xe9" + (target - (site + 5)).to_bytes(4, "little", signed=True)


@dataclass(eq=False)
class LoadedProgram:
    program: Program
    jited: JitProgram
    prog_struct: int          # address of its struct bpf_prog
    entry: EntryPoint


class JitEngine(Engine):
    """The kernel's x86-64 JIT (ported) under unicorn, one long-lived machine."""

    name = "jit"
    # The profile's labels: the JIT names the profile only in the error of an unknown flavour.
    ignores_profile_fields = frozenset({"name", "description", "kernel_bugs"})

    def __init__(self, profile: str | Profile = "linux-6.1", bugs: frozenset[str] = frozenset(),
                 budget: int = DEFAULT_BUDGET, seed: int = 0, retpoline: bool | None = None,
                 force_indirect: bool = False) -> None:
        try:
            self.profile: Profile = get_profile(profile)
            self.bugs = bugs_for("jit", validate_bugs(frozenset(bugs)))
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        self.budget = budget
        self.seed = seed
        self.options = JitOptions(retpoline=retpoline, force_indirect=force_indirect, bugs=self.bugs)
        percpu = self.profile.inline_smp_processor_id
        self.emu = Emulator(self.profile.x86_tail_call_offset,
                            None if percpu is None else (percpu.this_cpu_off, percpu.cpu_number, SMP_PROCESSOR_ID))
        self.emu.helper_handler = self._call_helper
        for reg in range(8):   # rax..rdi: the registers the JIT jumps through
            self.emu.install_thunk(reg, retpoline_thunk(reg))
        self.env = JitEnv(alloc_image=self.emu.alloc_image, helper_addr=self.emu.helper_addr,
                          map_addr=self._map_addr, map_value_addr=self._map_value_addr,
                          indirect_thunk_addr=self.emu.thunk_addr)
        self.prandom = Prandom(seed)
        # run length -> its context's bytes: (address, bytes, where in host memory or None)
        self._xdp_writes: dict[int, tuple[tuple[int, bytes, tuple[memoryview, int] | None], ...]] = {}
        self._scenario: Scenario | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.maps: dict[str, BpfMap] = {}
        self.mapdefs: dict[str, MapDef] = {}
        self.map_struct: dict[str, int] = {}
        self.map_values: dict[str, int] = {}
        self.map_by_addr: dict[int, BpfMap] = {}
        self.loaded: dict[str, LoadedProgram] = {}
        self._event_violations: list[str] = []
        # a prog array's contents, kept from one slot change (_on_slot_change) to the next
        self._slot_contents: dict[str, MapContents] = {}
        # (poke, the program in its slot) -> what its site and bypass must hold (_expected_poke_bytes)
        self._expected_pokes: dict[tuple[PokeDescriptor, str | None], list[tuple[int, bytes]]] = {}
        self._wide_map_op_result = False     # a map op returned a value that 32 bits do not hold
        self._completed = False              # the scenario's events have all been applied

    # -- what dump and tests look at ---------------------------------------------------
    @property
    def programs(self) -> dict[str, JitProgram]:
        """The JIT output of every loaded program, by name (images as compiled, before later pokes)."""
        return {name: lp.jited for name, lp in self.loaded.items()}

    def image_bytes(self, prog: str, index: int = 0) -> bytes:
        """An image as it is now in emulated memory, pokes included."""
        image = self.loaded[prog].jited.images[index]
        return self.emu.read(image.base, len(image.code))

    def inspect(self, scenario: Scenario, stop: int | None = None) -> Iterator[Inspection]:
        """The programs' code after loading and after each event (the public view of the images)."""
        self.start(scenario)
        yield Inspection(None, None, self.program_code())
        last = len(scenario.events) - 1 if stop is None else min(stop, len(scenario.events) - 1)
        for index in range(last + 1):
            outcome = self.apply(index, scenario.events[index])
            yield Inspection(index, outcome, self.program_code())

    def program_code(self) -> dict[str, ProgramCode]:
        """Every loaded program's xlated instructions and images as they are in memory now."""
        result = {}
        for name, lp in self.loaded.items():
            images = []
            for index, image in enumerate(lp.jited.images):
                sites = []
                for poke in image.pokes:
                    expected = dict(self._expected_poke_bytes(poke)) if poke.tailcall_target_stable else {}
                    points = [("site", poke.tailcall_target)]
                    if poke.tailcall_bypass is not None:
                        points.append(("bypass", poke.tailcall_bypass))
                    sites += [PokeSite(poke.insn_idx, poke.map, poke.key, kind, addr, poke.tailcall_target_stable,
                                       self.emu.read(addr, 5), expected.get(addr)) for kind, addr in points]
                images.append(ImageCode(image.func_index, image.base, self.image_bytes(name, index),
                                        tuple(image.addrs), tuple(image.orig_pc), tuple(sites)))
            # the instructions as BPF_OBJ_GET_INFO_BY_FD hands them out (tail calls as `call 12`)
            xlated = lp.jited.xlate_result.dump_insns() if lp.jited.xlate_result is not None else lp.jited.xlated
            result[name] = ProgramCode(name, tuple(xlated), tuple(images))
        return result

    def symbolize(self, address: int) -> str | None:
        for name, lp in self.loaded.items():
            for image in lp.jited.images:
                if image.base <= address < image.base + len(image.code):
                    label = name if image.func_index == 0 else f"{name}/func{image.func_index}"
                    return f"{label}+0x{address - image.base:x}"
        for name, struct in self.map_struct.items():
            if address == struct:
                return f"map:{name}"
        for name, values in self.map_values.items():
            size = value_region_size(self.mapdefs[name])
            if values <= address < values + max(size, 1):
                return f"map_value:{name}+0x{address - values:x}"
        if HELPER_BASE <= address < THUNK_BASE and (address - HELPER_BASE) % 8 == 0:
            return kernel_symbol((address - HELPER_BASE) // 8)
        if THUNK_BASE <= address < THUNK_BASE + THUNK_SLOT * len(X86_REGS):
            reg, offset = divmod(address - THUNK_BASE, THUNK_SLOT)
            return f"__x86_indirect_thunk_{X86_REGS[reg]}" + (f"+0x{offset:x}" if offset else "")
        return None

    # -- HelperEnv (bpfdiff.helpers) ---------------------------------------------------
    def map_at(self, addr: int) -> BpfMap | None:
        return self.map_by_addr.get(addr)

    def read(self, addr: int, n: int) -> bytes:
        if not self.emu.program_visible(addr, n):
            raise HelperFault(FAULT_MEMORY, f"helper read of {n} bytes at 0x{addr:x}: not program memory")
        return self.emu.read(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        if not self.emu.program_visible(addr, len(data)):
            raise HelperFault(FAULT_MEMORY, f"helper write of {len(data)} bytes at 0x{addr:x}: not program memory")
        self.emu.write(addr, data)

    def _call_helper(self, helper_id: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        if helper_id == isa.KERNEL_FUNC_htab_map_lookup_elem:
            # __htab_map_lookup_elem, which the inlined hash lookup calls: the element, whose
            # value the xlated code finds at offsetof(struct htab_elem, key) + round_up(key_size, 8)
            value = call_helper(self, isa.BPF_FUNC_map_lookup_elem, r1, r2, r3, r4, r5)
            bpf_map = self.map_by_addr[r1]
            return value - htab_value_offset(self.profile, bpf_map.key_size) if value else 0
        # the functions the verifier's rewrites call (array_map_update_elem...): their helper's semantics
        if helper_id in isa.KERNEL_FUNC_HELPER:
            value = call_helper(self, isa.KERNEL_FUNC_HELPER[helper_id], r1, r2, r3, r4, r5)
            # the only value for which the two widths differ (unaffected_profile_fields)
            self._wide_map_op_result = self._wide_map_op_result or value >> 32 != 0
            # an `int` map op leaves its result in eax: the upper half of rax is zero
            return value & ((1 << self.profile.map_ops_return_bits) - 1)
        return call_helper(self, helper_id, r1, r2, r3, r4, r5)

    # -- JitEnv -------------------------------------------------------------------------
    def _map_addr(self, name: str) -> int:
        return self.map_struct[name]

    def _map_value_addr(self, name: str) -> int:
        return self.map_values[name]

    def _prog_array_target(self, map_name: str, key: int) -> int | None:
        bpf_map = self.maps.get(map_name)
        if not isinstance(bpf_map, ProgArrayMap):
            return None
        prog = bpf_map.get(key)
        return None if prog is None else self.loaded[prog].jited.bpf_func

    # -- scenario -----------------------------------------------------------------------
    def execute(self, scenario: Scenario) -> list[EventOutcome]:
        self.start(scenario)
        outcomes = [self.apply(index, event) for index, event in enumerate(scenario.events)]
        self._completed = True
        return outcomes

    def unaffected_profile_fields(self, against: Profile | None = None) -> frozenset[str]:
        if not self._completed or self._scenario is None:
            return self.ignores_profile_fields
        unaffected = set(self.ignores_profile_fields)
        if not self._wide_map_op_result:
            unaffected.add("map_ops_return_bits")
        if not subprog_r0_trust_matters([lp.program for lp in self.loaded.values()], self.mapdefs, self.profile,
                                        against, self.options, self._scenario.prog_type):
            unaffected.add("verifier_trusts_subprog_r0")    # the same xlated code, compiled alike
        return frozenset(unaffected)

    def start(self, scenario: Scenario) -> None:
        """Forget the previous scenario, create the maps, load the programs without a Load event."""
        self.emu.reset()
        self._reset_state()
        if scenario.prog_type not in PROG_TYPES:
            raise EngineError(f"unknown program type {scenario.prog_type!r} (known: {', '.join(PROG_TYPES)})")
        self._scenario = scenario
        for mapdef in scenario.maps:
            self._create_map(mapdef)
        upfront, _explicit = scenario.load_order()
        for name in upfront:
            self._load(name)

    def _create_map(self, mapdef: MapDef) -> None:
        profile = self.profile
        if mapdef.name in self.maps:
            raise EngineError(f"map {mapdef.name!r} defined twice")
        try:
            check_map_def(mapdef)
            size = value_region_size(mapdef)
            if mapdef.kind == "hash":
                struct = self.emu.alloc_data(HASH_MAP_HEADER_SIZE)
                values = self.emu.alloc_values(size)
            elif mapdef.kind == "array":
                # struct bpf_array with value[] right behind the header, as in the
                # kernel: the inlined lookup (array_map_gen_lookup) computes
                # map + offsetof(struct bpf_array, value) + index * elem_size.
                # A guarded block: an access beyond the last value, or before the first
                # (into the header), faults as in the interpreter.
                values = self.emu.alloc_values(size, header=profile.off_array_ptrs)
                struct = values - profile.off_array_ptrs
                self.emu.write(struct + profile.off_array_max_entries, mapdef.max_entries.to_bytes(4, "little"))
            else:
                # struct bpf_array of a prog array: the header, then ptrs[]
                struct = self.emu.alloc_data(profile.off_array_ptrs + 8 * mapdef.max_entries)
                self.emu.write(struct + profile.off_array_max_entries, mapdef.max_entries.to_bytes(4, "little"))
                values = struct + profile.off_array_ptrs
            bpf_map = create_map(mapdef, store=self.emu, base=values, is_loaded=self.loaded.__contains__)
        except MapDefinitionError as exc:
            raise EngineError(str(exc)) from None
        if isinstance(bpf_map, ProgArrayMap):
            bpf_map.add_observer(self._on_slot_change)
        self.maps[mapdef.name] = bpf_map
        self.mapdefs[mapdef.name] = mapdef
        self.map_struct[mapdef.name] = struct
        self.map_values[mapdef.name] = values
        self.map_by_addr[struct] = bpf_map

    def _load(self, name: str) -> None:
        assert self._scenario is not None
        if name in self.loaded:
            return            # loading it again is a no-op, as for the interpreter
        try:
            program = self._scenario.program(name)
        except KeyError:
            raise EngineError(f"load of unknown program {name!r}") from None
        # bpf_int_jit_compile asks the verifier model (bpfdiff.verifier.verify),
        # as the interpreter's loader does: both engines refuse the same programs.
        try:
            jited = bpf_int_jit_compile(program, self.mapdefs, self.profile, self.env, self.options,
                                        self._prog_array_target, self._scenario.prog_type)
        except VerifierError as exc:
            # The kernel refuses the program at load (bad input).  A JitError
            # is left to propagate: the loader still has the interpreter, so
            # a JIT that gives up is an engine failure worth seeing.
            raise ProgramRefused(program.name, str(exc)) from None
        for image in jited.images:
            self.emu.install_image(image.base, image.code, name, image.insn_at)
        prog_struct = self.emu.alloc_data(STRUCT_BPF_PROG_SIZE)
        self.emu.write(prog_struct + self.profile.off_prog_bpf_func, jited.bpf_func.to_bytes(8, "little"))
        main = jited.images[0]
        # Only a program that tail-calls reads its counter; in a program that
        # does not, the slot is meaningless once it runs in a caller's frame
        # (5.5: a tail-called target keeps the caller's 512-byte frame).
        counter = main.tail_call_cnt_off if main.tail_call_reachable else None
        entry = EntryPoint(name, jited.bpf_func, jited.bpf_func + self.profile.x86_tail_call_offset,
                           main.base + main.addrs[0], counter, main.tail_call_cnt_ptr)
        self.emu.add_entry_point(entry)
        for image in jited.images:
            self.emu.add_tail_calls([poke.tailcall_target for poke in image.pokes],
                                    [(image.base + offset, reg) for offset, reg in image.indirect_tail_calls])
        self.loaded[name] = LoadedProgram(program, jited, prog_struct, entry)

    def apply(self, index: int, event: Event) -> EventOutcome:
        """Apply event number ``index`` of the started scenario (events go in order)."""
        self._event_violations = []
        if isinstance(event, Run):
            return self._run(index, event)
        if isinstance(event, Load):
            self._load(event.prog)     # bpf_tail_call_direct_fixup patches against the current slots
            return EventOutcome(index, "load", retval=0, violations=tuple(self.check_pokes()))
        if isinstance(event, (Update, Delete)):
            bpf_map = self.maps.get(event.map)
            if bpf_map is None:
                raise EngineError(f"event {index}: unknown map {event.map!r}")
            if isinstance(event, Update):
                kind, retval = "update", bpf_map.update(event.key, event.value, event.flags)
            else:
                kind, retval = "delete", bpf_map.delete(event.key)
            violations = self._event_violations + self.check_pokes()
            return EventOutcome(index, kind, retval=retval, violations=tuple(violations))
        raise EngineError(f"event {index}: unknown event {event!r}")

    def _run(self, index: int, event: Run) -> EventOutcome:
        loaded = self.loaded.get(event.prog)
        if loaded is None:
            raise EngineError(f"event {index}: run of {event.prog!r}, which is not loaded")
        assert self._scenario is not None
        check_run_input(self._scenario, event, index)
        self.prandom = Prandom.for_run(self.seed, index)
        if self._scenario.prog_type == PROG_XDP:
            raw = self.emu.run(loaded.entry, event.mem, self.budget, context=self._xdp_context(len(event.mem)),
                               headroom=xdp.XDP_PACKET_HEADROOM)
        else:
            raw = self.emu.run(loaded.entry, event.mem, self.budget)
        result = RunResult(
            r0=raw.rax, exit=raw.exit, tail_calls=raw.tail_calls, trace=tuple(raw.trace),
            maps=self._contents(), mem=raw.mem, fault_kind=raw.fault_kind, fault_pc=raw.fault_pc,
            fault_prog=raw.fault_prog, fault_reason=raw.fault_reason)
        return EventOutcome(index, "run", run=result, violations=tuple(raw.violations))

    def _xdp_context(self, length: int) -> int:
        """Write the xdp_buff (and what it points to) of a run over ``length`` bytes; its address."""
        writes = self._xdp_writes.get(length)
        if writes is None:
            # the context page stays mapped for the emulator's life: its host view too
            writes = self._xdp_writes[length] = tuple((addr, data, self.emu.host_view(addr, len(data)))
                                                      for addr, data in self._xdp_context_bytes(length))
        for addr, data, where in writes:
            if where is None:
                self.emu.write(addr, data)
            else:
                view, offset = where
                view[offset:offset + len(data)] = data
        return XDP_CTX_BASE

    def _xdp_context_bytes(self, length: int) -> tuple[tuple[int, bytes], ...]:
        """(address, bytes) of the xdp_buff, its rxq info and its device for a run over ``length`` bytes."""
        layout = self.profile.xdp
        data = self.emu.packet_start(length)
        buff = bytearray(XDP_RXQ_INFO - XDP_CTX_BASE)
        fields = {layout.off_buff_data: data, layout.off_buff_data_end: data + length,
                  layout.off_buff_data_meta: data, layout.off_buff_data_hard_start: data - xdp.XDP_PACKET_HEADROOM,
                  layout.off_buff_rxq: XDP_RXQ_INFO}
        if layout.off_buff_txq is not None:
            fields[layout.off_buff_txq] = 0          # the test run's xdp_buff has no txq
        for off, value in fields.items():
            buff[off:off + 8] = value.to_bytes(8, "little")
        rxq = bytearray(XDP_NET_DEVICE - XDP_RXQ_INFO)
        rxq[layout.off_rxq_dev:layout.off_rxq_dev + 8] = XDP_NET_DEVICE.to_bytes(8, "little")
        rxq[layout.off_rxq_queue_index:layout.off_rxq_queue_index + 4] = xdp.RX_QUEUE_INDEX.to_bytes(4, "little")
        return ((XDP_CTX_BASE, bytes(buff)), (XDP_RXQ_INFO, bytes(rxq)),
                (XDP_NET_DEVICE + layout.off_netdev_ifindex, xdp.LOOPBACK_IFINDEX.to_bytes(4, "little")))

    def _contents(self) -> tuple[tuple[str, MapContents], ...]:
        return tuple([(name, self._map_contents(name, bpf_map)) for name, bpf_map in self.maps.items()])

    def _map_contents(self, name: str, bpf_map: BpfMap) -> MapContents:
        # Asked after every run; a prog array changes only by a slot exchange (no program writes
        # one), which _on_slot_change sees, so its answer is kept until then.
        if not isinstance(bpf_map, ProgArrayMap):
            return bpf_map.contents()
        contents = self._slot_contents.get(name)
        if contents is None:
            contents = self._slot_contents[name] = bpf_map.contents()
        return contents

    # -- prog-array slots and text poking -------------------------------------------------
    def _on_slot_change(self, bpf_map: ProgArrayMap, index: int, old: str | None, new: str | None) -> None:
        self._slot_contents.pop(bpf_map.name, None)
        slot = self.map_struct[bpf_map.name] + self.profile.off_array_ptrs + 8 * index
        new_struct = self.loaded[new].prog_struct if new is not None else 0
        self.emu.write(slot, new_struct.to_bytes(8, "little"))
        old_func = self.loaded[old].jited.bpf_func if old is not None else None
        new_func = self.loaded[new].jited.bpf_func if new is not None else None
        problems = map_poke_run([lp.jited for lp in self.loaded.values()], bpf_map.name, index,
                                old_func, new_func, self.emu.read, self.emu.write_text, bugs=self.bugs)
        self._event_violations.extend(problems)

    def check_pokes(self) -> list[str]:
        """The patch invariant of every stable direct tail-call site, one line per breach.

        Runs after every map and load event: each image with pokes is read once and its sites
        compared there; only a poke whose bytes differ (or lie outside its image) is checked
        again by :meth:`_check_poke`, which words its breaches.
        """
        problems = []
        read = self.emu.read
        for name, lp in self.loaded.items():
            for image in lp.jited.images:
                if not image.pokes:
                    continue
                base = image.base
                code = read(base, len(image.code))
                for poke in image.pokes:
                    if not poke.tailcall_target_stable:
                        continue
                    for addr, want in self._expected_poke_bytes(poke):
                        offset = addr - base
                        if offset < 0 or code[offset:offset + len(want)] != want:
                            problems.extend(self._check_poke(name, poke))
                            break
        return problems

    def _slot_target(self, poke: PokeDescriptor) -> str | None:
        bpf_map = self.maps.get(poke.map)
        return bpf_map.get(poke.key) if isinstance(bpf_map, ProgArrayMap) else None

    def _expected_poke_bytes(self, poke: PokeDescriptor) -> list[tuple[int, bytes]]:
        """(address, bytes) the site and its bypass must hold for the slot's current program.

        Filled slot: the site jumps to the target's tail-call entry (the
        profile's offset, not the descriptor's adj_off, so a miscounted adj_off
        shows), the bypass (if any) is a nop; empty slot: the site is a nop, the
        bypass jumps over the pops and the site.
        """
        target = self._slot_target(poke)
        # Remembered per (poke, target) for the scenario: the answer reads nothing else than the
        # descriptor's fields, fixed once its compile's fixup made it stable (the only pokes asked
        # about), and the target's tail-call entry, fixed while it is loaded (a scenario loads a
        # program once and unloads nothing; _reset_state forgets them all).
        known = self._expected_pokes.get((poke, target))
        if known is not None:
            return known
        entry = None if target is None else self.loaded[target].entry.tail_entry
        expected = [(poke.tailcall_target, poke.nop if entry is None else jmp_rel32(poke.tailcall_target, entry))]
        if poke.tailcall_bypass is not None and poke.bypass_addr is not None:
            expected.append((poke.tailcall_bypass,
                             jmp_rel32(poke.tailcall_bypass, poke.bypass_addr) if target is None else poke.nop))
        if poke.tailcall_target_stable:
            self._expected_pokes[(poke, target)] = expected
        return expected

    def _check_poke(self, prog: str, poke: PokeDescriptor) -> list[str]:
        problems = []
        for addr, want in self._expected_poke_bytes(poke):
            have = self.emu.read(addr, len(want))
            if have != want:       # the words only for a breach: this runs after every event
                what = "site" if addr == poke.tailcall_target else "bypass"
                slot = f"{poke.map}[{poke.key}] = {self._slot_target(poke) or 'empty'}"
                problems.append(f"{prog}: tail-call {what} at 0x{addr:x} ({slot}) holds {have.hex()}, "
                                f"expected {want.hex()}{self._jump_mismatch(addr, have, want)}")
        return problems

    def _jump_mismatch(self, addr: int, have: bytes, want: bytes) -> str:
        """When both are jumps: do they go to another program, or into the right one at another offset?

        The two are different bugs (a stale retarget vs a miscounted prologue
        skip); the words keep them apart once the numbers are normalised away.
        """
        if have[:1] != b"\xe9" or want[:1] != b"\xe9":
            return ""
        have_prog, want_prog = self._image_owner(addr, have), self._image_owner(addr, want)
        if have_prog == want_prog:
            return f" (right program {want_prog}, wrong offset into it)"
        return f" (jumps into {have_prog or 'no program'} instead of {want_prog})"

    def _image_owner(self, site: int, jmp: bytes) -> str | None:
        dest = site + 5 + int.from_bytes(jmp[1:5], "little", signed=True)
        for name, lp in self.loaded.items():
            for image in lp.jited.images:
                if image.base <= dest < image.base + len(image.code):
                    return name
        return None

    def close(self) -> None:
        """Free the emulator; the engine cannot run scenarios afterwards."""
        self._reset_state()
        self.emu.close()

