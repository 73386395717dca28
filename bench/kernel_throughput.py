"""Throughput of the real kernel through one guest (``kernel-jit`` / ``kernel-interp``).

    .venv/bin/python bench/kernel_throughput.py [--seconds S] [--kernel NAME|PATH] [--seed N]

Prints the time from qemu start to the agent's hello, then for a few seconds
each: program loads/s (``load_programs``, images included), and scenario
runs/s -- run events per second executed through the guest, one request per
scenario -- on the examples and on generated scenarios (a scenario with a
program the real verifier refuses stops there; those are counted).  Each is
measured twice: one request at a time (``sync``), and with the next request
queued while the guest works on the current one (``queued``), as the oracle
does in a campaign (``Engine.submit``: the kernel engines' requests go out
before our engines run).  Then where the guest's time goes (the agent's own
clock per syscall kind) and the load average, since under TCG every number
here scales with the CPU the guest gets: each scenario line also says how much CPU
qemu used per run event (user + system time of its process).  That moves with the
machine's load too (the host's cores are shared), but less than runs/s do: the same
code measured 1.73 and 2.29 ms/run at load averages ~3 and ~5 while its runs/s went
404 -> 237.  Compare changes run back to back, and best interleaved on guests
booted side by side.  Target: >= 300 scenario runs/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from bpfdiff.fuzz.generate import scenario_from_seed

from bpfdiff.engine import EngineError
from bpfdiff.kernel import protocol
from bpfdiff.kernel.engine import outcomes_from_reply
from bpfdiff.kernel.guest import BadScenario, Guest, UnsupportedScenario, build_request
from bpfdiff.kernel.image import DEFAULT_KERNEL, setup
from bpfdiff.scenario import PROG_XDP, Delete, Run, Scenario, Update, key_u32
from bpfdiff.scenario_text import parse_scenario
from bpfdiff.xdp import ETH_HLEN

EXAMPLES = Path(__file__).resolve().parent.parent / "corpus" / "examples"


def padded(scenario: Scenario) -> Scenario:
    """As XDP, runs without an XDP-sized packet given zeros up to an Ethernet header (examples on raw memory)."""
    return dataclasses.replace(scenario, prog_type=PROG_XDP, events=tuple(
        dataclasses.replace(ev, mem=ev.mem.ljust(ETH_HLEN, b"\0")) if isinstance(ev, Run) else ev
        for ev in scenario.events))


def runs_in(scenario: Scenario) -> int:
    return sum(isinstance(ev, Run) for ev in scenario.events)


def qemu_cpu_seconds(guest: Guest) -> float:
    """User + system CPU time of the guest's qemu process so far (proc(5), /proc/PID/stat)."""
    fields = Path(f"/proc/{guest.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_scenarios(guest: Guest, scenarios: list[Scenario], seconds: float, jit: bool,
                    queued: bool = False) -> tuple[float, float, int, float]:
    """(scenarios/s, run events/s, refused, qemu CPU seconds per run event) over ``seconds``,
    cycling through ``scenarios``; ``queued``: the next request is sent before the current
    reply is read."""
    done = runs = refused = 0
    cpu = qemu_cpu_seconds(guest)
    start = time.perf_counter()
    in_flight: list[tuple[Scenario, object, list, int]] = []
    i = 0
    while True:
        running = time.perf_counter() - start < seconds
        while running and len(in_flight) < (2 if queued else 1):
            scenario = scenarios[i % len(scenarios)]
            i += 1
            req, maps = build_request(scenario, jit, images=False, events=True)
            in_flight.append((scenario, req, maps, guest.submit(req.encode())))
        if not in_flight:
            break
        scenario, req, maps, ticket = in_flight.pop(0)
        reply = protocol.decode_scenario_reply(guest.collect(ticket), req, maps)
        try:
            outcomes_from_reply(scenario, jit, reply)
            runs += runs_in(scenario)
        except EngineError:
            refused += 1
        done += 1
    elapsed = time.perf_counter() - start
    return done / elapsed, runs / elapsed, refused, (qemu_cpu_seconds(guest) - cpu) / max(runs, 1)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default: %(default)s)")
    parser.add_argument("--kernel", default=DEFAULT_KERNEL, help="Debian kernel or bzImage (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="first generator seed (default: %(default)s)")
    args = parser.parse_args()

    setup(args.kernel)
    print(f"load average at start: {loadavg()}")
    guest = Guest.start(args.kernel)
    print(f"boot to agent: {guest.boot_seconds:.1f} s ({guest.hello.release}, {guest.hello.channel})")
    try:
        examples = [padded(parse_scenario(p.read_text(), str(p))) for p in sorted(EXAMPLES.glob("*.scn"))]
        # loads/s: every example's programs, images read back
        loads = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            for scenario in examples:
                loads += len(guest.load_programs(scenario, jit=True))
        print(f"loads/s (JIT, images read back): {loads / (time.perf_counter() - start):.0f}")

        for jit in (True, False):
            for queued in (False, True):
                per_s, runs_s, _, cpu = bench_scenarios(guest, examples, args.seconds, jit, queued)
                print(f"examples, {'kernel-jit' if jit else 'kernel-interp'}, {'queued' if queued else 'sync'}: "
                      f"{per_s:.0f} scenarios/s, {runs_s:.0f} scenario runs/s (qemu CPU {1000 * cpu:.2f} ms/run)")

        # Where kernel-jit's time goes: a prog-array update or delete re-patches the caller's
        # direct tail-call site (text_poke in the kernel), far dearer under TCG than a run.
        for label, events in (("40 runs", tuple(Run("caller", bytes(ETH_HLEN)) for _ in range(40))),
                              ("40 slot updates/deletes", tuple(
                                  ev for _ in range(20) for ev in (Update("jmp_table", key_u32(0), "target"),
                                                                   Delete("jmp_table", key_u32(0)))))):
            scenario = dataclasses.replace(examples[0], events=events)
            for jit in (True, False):
                req, maps = build_request(scenario, jit, images=False, events=True)
                guest.request(req.encode())
                start = time.perf_counter()
                for _ in range(3):
                    guest.request(req.encode())
                per_event = (time.perf_counter() - start) / 3 / len(events) * 1000
                print(f"{label} on direct_tail_call, "
                      f"{'kernel-jit' if jit else 'kernel-interp'}: {per_event:.2f} ms per event "
                      "(with loading the scenario's programs)")

        generated, skipped = [], 0
        for seed in range(args.seed, args.seed + 200):
            scenario = scenario_from_seed(seed)
            try:
                build_request(scenario, True, images=False, events=True)
                generated.append(scenario)
            except (UnsupportedScenario, BadScenario):
                skipped += 1
        for jit in (True, False):
            for queued in (False, True):
                guest.stats()
                per_s, runs_s, refused, cpu = bench_scenarios(guest, generated, args.seconds, jit, queued)
                stats = guest.stats()
                print(f"generated (seeds {args.seed}..{args.seed + 199}, {skipped} skipped), "
                      f"{'kernel-jit' if jit else 'kernel-interp'}, {'queued' if queued else 'sync'}: "
                      f"{per_s:.0f} scenarios/s, {runs_s:.0f} scenario runs/s (qemu CPU {1000 * cpu:.2f} ms/run; "
                      f"{refused} scenario executions stopped at a refused program)")
            engine = "kernel-jit" if jit else "kernel-interp"
            print(f"  where the guest's time went (last pass, the agent's clock), {engine}:")
            total = sum(sec for name, (_n, sec) in stats.items() if name != "scenario requests")
            for name, (calls, sec) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
                if name != "scenario requests" and sec >= 0.01 * total:
                    print(f"    {name:36s} {100 * sec / total:5.1f}%  {calls:6d} x {1000 * sec / calls:6.3f} ms")
    finally:
        guest.close()
    print(f"load average at the end: {loadavg()}")
    print("target: >= 300 scenario runs/s")


if __name__ == "__main__":
    main()
