"""A record of everything the engines and the verifier model answer, for performance work.

    .venv/bin/python bench/equivalence.py [--seeds N] [--first S] [--profiles P,...] [--bug-seeds K] > out.jsonl

A speed change must not change a single answer: record the output before the
change, again after it, and compare the files byte for byte (``cmp``).  One
JSON line per scenario: for seeds S..S+N-1 of every profile, the generated
scenario and three mutations of it (``mutate_scenario``, which reach the
refusal paths), each program's verdict of the verifier model (``verify`` with
and without ``force_indirect``: the xlated instructions, orig_pc, pokes and
subprograms, or the refusal), ``check_load``'s verdict and ``explore``'s facts;
both engines' outcomes of every event (or the error); for the generated
scenario and the first mutation the JIT's images and poke sites after the last
event and the oracle's verdict; for the first K seeds the oracle's verdict with
each planted bug of the profile switched on.  The output depends on the
generator: compare only runs of the same generator version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import traceback
from typing import Any

from bpfdiff.fuzz import generate, oracle
from bpfdiff.interp.engine import InterpEngine
from bpfdiff.jit.bpf_jit_comp import JitOptions
from bpfdiff.jit.engine import JitEngine

from bpfdiff import isa, verifier
from bpfdiff.bugs import BUGS
from bpfdiff.engine import EngineError
from bpfdiff.profiles import PROFILES, Profile, get_profile
from bpfdiff.scenario import Scenario

MUTATIONS = 3              # mutated variants per generated scenario


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, sort_keys=True, default=repr) + "\n")


def xlated(result: Any) -> dict[str, Any]:
    return {"insns": isa.encode(result.insns).hex(), "maps": [insn.map for insn in result.insns if insn.map],
            "orig": result.orig_pc, "pokes": [repr(p) for p in result.pokes],
            "subprogs": [repr(s) for s in result.subprogs]}


def model_record(prog: isa.Program, maps: dict, profile: Profile, prog_type: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for force_indirect in (False, True):
        try:
            result = verifier.verify(prog, maps, profile, JitOptions(force_indirect=force_indirect), prog_type)
            record[f"verify{int(force_indirect)}"] = xlated(result)
        except verifier.VerifierError as exc:
            record[f"verify{int(force_indirect)}"] = f"refused: {exc}"
    try:
        verifier.check_load(prog, maps, profile)
        record["check_load"] = "ok"
    except verifier.VerifierError as exc:
        record["check_load"] = f"refused: {exc}"
    facts = verifier.explore(prog.insns, maps, profile, prog_type)
    record["explore"] = None if facts is None else [sorted(facts.seen), sorted(facts.tail_calls.items()),
                                                    sorted(facts.lookups.items(), key=repr)]
    return record


def outcomes(engine: Any, scenario: Scenario) -> Any:
    try:
        return [outcome.to_json() for outcome in engine.execute(scenario)]
    except EngineError as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a crash is an answer too
        return "crash: " + "".join(traceback.format_exception_only(type(exc), exc))


def images(engine: JitEngine, scenario: Scenario) -> Any:
    try:
        code = None
        for inspection in engine.inspect(scenario):
            code = inspection.programs
        return {name: [isa.encode(program.xlated).hex(),
                       [[image.func_index, image.base, hashlib.sha256(image.code).hexdigest(), list(image.addrs),
                         list(image.pcs), [repr(site) for site in image.poke_sites]] for image in program.images]]
                for name, program in (code or {}).items()}
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def verdict(scenario: Scenario, profile: str, pool: oracle.EnginePool, bugs: frozenset[str] = frozenset()) -> Any:
    try:
        v = oracle.run_oracle(scenario, profile=profile, bugs=bugs, pool=pool)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return {"ok": v.ok, "findings": [(f.kind, f.signature, f.event_index, f.field, f.values, f.detail, f.odd,
                                      f.alternatives) for f in v.findings], "notes": v.notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--profiles", default=",".join(sorted(PROFILES)))
    parser.add_argument("--bug-seeds", type=int, default=40, help="seeds run with each planted bug")
    args = parser.parse_args()
    for name in args.profiles.split(","):
        profile = get_profile(name)
        interp, jit, inspector = InterpEngine(name), JitEngine(name), JitEngine(name)
        pool = oracle.EnginePool()
        for seed in range(args.first, args.first + args.seeds):
            scenario = generate.scenario_from_seed(seed, name)
            variants = [("generated", scenario)] + [
                (f"mutation{k}", generate.mutate_scenario(scenario, generate.RandomDraw(seed * 7 + k)))
                for k in range(MUTATIONS)]
            for tag, s in variants:
                maps = {m.name: m for m in s.maps}
                record: dict[str, Any] = {"profile": name, "seed": seed, "variant": tag,
                                          "programs": {p.name: model_record(p, maps, profile, s.prog_type)
                                                       for p in s.programs},
                                          "interp": outcomes(interp, s), "jit": outcomes(jit, s)}
                if tag in ("generated", "mutation0"):
                    record["images"] = images(inspector, s)
                    record["oracle"] = verdict(s, name, pool)
                emit(record)
            if seed - args.first < args.bug_seeds:
                for bug in BUGS:
                    if name in bug.profiles:
                        emit({"profile": name, "seed": seed, "bug": bug.name,
                              "oracle": verdict(scenario, name, pool, frozenset({bug.name}))})
        pool.close()
        for engine in (interp, jit, inspector):
            engine.close()


if __name__ == "__main__":
    main()
