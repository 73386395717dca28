"""A fuzzing campaign: corpus replay, generation and mutation, findings saved as they come.

What one campaign does (``bpfdiff fuzz``):

1. load the corpus (scenario files, ``.data`` files, atheris inputs) and
   replay every entry that the checker accepts under the campaign's profile;
2. then, until ``--time`` or ``--runs`` is used up: a fresh scenario from the
   generator (seed ``--seed + i`` for the i-th generated scenario) or, one
   time in four when there is a corpus, a mutation of a corpus entry (kept
   only when the checker accepts it);
3. every scenario goes through the oracle; each finding is written at once,
   atomically (temp file + ``os.replace``), to the crash directory as a
   replayable scenario (meta: profile, inject, seed or origin, signature)
   plus a short ``.txt`` report -- at most ``max_per_signature`` files per
   signature;
4. a scenario that covers a feature nothing before it covered (static
   features of :func:`bpfdiff.fuzz.corpus.scenario_features` plus, per run,
   opcode class x tail-call kind x preceding map-event kind of every program
   it entered) is added to the corpus directory, atomically.

With ``jobs > 1`` the work runs in worker processes (spawned, each with its
own engines); the parent collects results, writes files and draws the status
line.  Ctrl-C -- or SIGTERM, what CI timeouts and service managers send --
stops the workers after their current scenario; whatever they found is
written before the summary.  Workers never outlive the campaign, whatever
ends it (even SIGKILL): each asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``) and a watchdog thread checks the parent's pid as well
(the death signal is tied to the thread that forked, and is lost if the
parent died before the worker asked for it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import hashlib
import multiprocessing
import os
import queue
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from bpfdiff.fuzz.checker import check_scenario
from bpfdiff.fuzz.generate import RandomDraw, mutate_scenario, scenario_from_seed
from bpfdiff.fuzz.oracle import DIVERGENCE, KNOWN, NEW_KINDS, EnginePool, Finding, Verdict, run_oracle

from bpfdiff.engine import EngineError, EventOutcome
from bpfdiff.isa import Insn, opcode_class_name
from bpfdiff.profiles import get_profile
from bpfdiff.scenario import Run, Scenario
from bpfdiff.scenario_text import SUFFIX, format_scenario

MUTATION_SHARE = 0.25
# Signals that stop a campaign cleanly (summary printed, findings kept).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BATCH_SECONDS = 0.25


@dataclass(frozen=True)
class CampaignConfig:
    time_limit: float | None = None       # seconds; None: no limit
    runs: int | None = None               # scenarios; None: no limit
    seed: int = 0
    profile: str = "linux-6.1"
    engines: tuple[str, ...] = ("interp", "jit")
    corpus: Path | None = None
    crashes: Path | None = None
    jobs: int = 1
    inject: frozenset[str] = frozenset()
    max_per_signature: int = 3


@dataclass
class Stats:
    scenarios: int = 0
    engine_runs: int = 0                  # run events x engines
    invalid: int = 0                      # corpus entries / mutants the checker refused
    replayed: int = 0
    findings: Counter[str] = field(default_factory=Counter)   # kind -> count
    signatures: dict[str, int] = field(default_factory=dict)  # signature -> findings seen
    corpus_size: int = 0
    saved: list[Path] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def divergences(self) -> int:
        return self.findings[DIVERGENCE]

    @property
    def new_findings(self) -> int:
        """Findings that fail a campaign: all but known kernel bugs of the profile."""
        return sum(self.findings[kind] for kind in NEW_KINDS)


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------
class FeatureModel:
    """Corpus features: the static ones of :mod:`bpfdiff.fuzz.corpus`, plus what the runs touched.

    Dynamic features, per run: ``run:<class>×<tail-call kind>×<last map event>``
    for every program the run entered (instruction class as in
    :func:`coarse_class`, the program's tail-call site kinds, the kind of the
    last prog-array or load event before the run), the tail-call count in
    buckets of 8, and the exit kind.  Coarse on purpose: the corpus should
    saturate, not grow with every scenario.
    """

    def __init__(self, profile: str) -> None:
        self.profile = get_profile(profile)

    def features(self, scenario: Scenario, outcomes: list[EventOutcome]) -> frozenset[str]:
        from bpfdiff.fuzz.corpus import event_kinds, scenario_features, tail_call_sites

        sites = tail_call_sites(scenario)
        found = set(scenario_features(scenario, sites))
        kinds = event_kinds(scenario)
        tc_kinds: dict[str, set[str]] = {}
        for prog, _pc, kind in sites:
            tc_kinds.setdefault(prog, set()).add(kind)
        classes = {prog.name: program_classes(prog.insns) for prog in scenario.programs}
        last_map_event = "none"
        for outcome, kind in zip(outcomes, kinds, strict=False):
            if outcome.run is None:
                if kind.startswith(("prog_array.", "load")):
                    last_map_event = kind
                continue
            for name in set(outcome.run.trace):
                for cls in classes.get(name, ()):
                    for tck in tc_kinds.get(name, {"none"}):
                        found.add(f"run:{cls}×{tck}×{last_map_event}")
            found.add(f"tailcalls:{min(outcome.run.tail_calls, 40) // 8}")
            found.add(f"exit:{outcome.run.exit}:{outcome.run.fault_kind}")
        return frozenset(found)


def coarse_class(insn: Insn) -> str:
    """The instruction class (``alu64``, ``jmp32``, ``ldx``...), atomics apart: ``stx.atomic``."""
    name = opcode_class_name(insn)
    return "stx.atomic" if name.startswith("stx.atomic") else name.split(".")[0]


# coarse_class by opcode: it reads nothing else (class, op, source, mode and size are the opcode's
# bits; a tail call and a helper call are both "jmp"), and every run's features ask it of every slot
_COARSE_CLASSES: dict[int, str] = {}


def program_classes(insns: Sequence[Insn]) -> set[str]:
    out, skip = set(), False
    known = _COARSE_CLASSES
    for insn in insns:
        if skip:
            skip = False
            continue
        skip = insn.is_lddw
        name = known.get(insn.opcode)
        if name is None:
            name = known[insn.opcode] = coarse_class(insn)
        out.add(name)
    return out


# ---------------------------------------------------------------------------
# One worker's stream of scenarios
# ---------------------------------------------------------------------------
@dataclass
class Item:
    """What a worker reports about one scenario worth keeping."""

    kind: str                    # "finding" or "corpus"
    scenario: Scenario | None    # None for a finding over its signature's cap: counted, not saved
    origin: str
    finding: Finding | None = None
    features: frozenset[str] = frozenset()


class Worker:
    def __init__(self, config: CampaignConfig, worker_id: int, corpus: list[tuple[str, Scenario]]) -> None:
        self.config = config
        self.worker_id = worker_id
        self.replay = [entry for i, entry in enumerate(corpus) if i % config.jobs == worker_id]
        self.corpus = list(corpus)
        self.pool = EnginePool()
        self.profile = get_profile(config.profile)
        self.rng = random.Random(config.seed * 7919 + worker_id)
        self.features_seen: set[str] = set()
        self.signatures_sent: Counter[str] = Counter()
        self.generated = 0
        self.model = FeatureModel(config.profile)

    def next_scenario(self) -> tuple[Scenario | None, str]:
        """The next scenario to run, with its origin; None when a mutant was invalid."""
        if self.replay:
            origin, scenario = self.replay.pop(0)
            return (None if check_scenario(scenario, self.profile) else scenario), f"corpus {origin}"
        if self.corpus and self.rng.random() < MUTATION_SHARE:
            origin, parent = self.rng.choice(self.corpus)
            mutant = mutate_scenario(parent, RandomDraw(self.rng.getrandbits(32)))
            return (None if check_scenario(mutant, self.profile) else mutant), f"mutation of {origin}"
        index = self.worker_id + self.generated * self.config.jobs
        self.generated += 1
        seed = self.config.seed + index
        return scenario_from_seed(seed, self.profile), f"seed {seed}"

    def step(self) -> tuple[int, int, int, list[Item]]:
        """Run one scenario: (scenarios done, engine runs, invalid inputs skipped, items to report)."""
        scenario, origin = self.next_scenario()
        if scenario is None:
            return 0, 0, 1, []
        try:
            verdict = run_oracle(scenario, self.config.engines, self.config.profile, self.config.inject, self.pool)
        except EngineError:
            return 1, 0, 1, []
        runs = sum(isinstance(e, Run) for e in scenario.events) * len(verdict.outcomes)
        return 1, runs, 0, self.items(scenario, origin, verdict)

    def items(self, scenario: Scenario, origin: str, verdict: Verdict) -> list[Item]:
        items = []
        for finding in verdict.findings:
            keep = self.signatures_sent[finding.signature] < self.config.max_per_signature
            self.signatures_sent[finding.signature] += 1
            items.append(Item("finding", scenario if keep else None, origin, finding))
        if self.config.corpus is not None and verdict.outcomes and not origin.startswith("corpus"):
            outcomes = next(iter(verdict.outcomes.values()))
            features = self.model.features(scenario, outcomes)
            if not features <= self.features_seen:
                self.features_seen |= features
                items.append(Item("corpus", scenario, origin, features=features))
        elif self.config.corpus is not None and verdict.outcomes:
            self.features_seen |= self.model.features(scenario, next(iter(verdict.outcomes.values())))
        return items

    def quota(self) -> int | None:
        """Scenarios this worker runs when the campaign has ``--runs``: its share of them."""
        if self.config.runs is None:
            return None
        jobs = self.config.jobs
        return self.config.runs // jobs + (1 if self.worker_id < self.config.runs % jobs else 0)


PR_SET_PDEATHSIG = 1          # include/uapi/linux/prctl.h
WATCHDOG_SECONDS = 0.5        # how often a worker checks that its parent is alive
ORPHAN_GRACE_SECONDS = 5.0    # an orphaned worker's cleanup may take this long, then it exits hard


def _ask_for_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends ``signum`` when our parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone does it
        pass


class _ParentGone(SystemExit):
    """Raised in an orphaned worker: unwind (engines closed in ``finally``), then exit."""


def _guard_against_orphaning(parent: int) -> Callable[[], bool]:
    """End this worker when ``parent`` dies; returns a function telling whether it has.

    SIGTERM while the parent lives is ignored, like SIGINT: a ``kill`` of the
    whole process group reaches the parent too, which then stops its workers
    in order and keeps their findings.  Once the parent is gone, SIGTERM (the
    death signal, or the watchdog's) unwinds the worker; a worker stuck in C
    code is ended hard after a grace period.
    """
    def orphaned() -> bool:
        return os.getppid() != parent

    def on_sigterm(signum: int, frame: object) -> None:
        if orphaned():
            raise _ParentGone(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    _ask_for_parent_death_signal(signal.SIGTERM)

    def watchdog() -> None:
        while not orphaned():
            time.sleep(WATCHDOG_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_SECONDS)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()
    return orphaned


# The fuzz loop allocates a great many short-lived containers (the verifier model's states, the
# interpreter's closures, the JIT's buffers) and makes almost no reference cycles, while its
# caches keep a large heap that every full collection walks.  CPython's first threshold (700
# allocations) then spends 13% of a differential pass in the collector (1,000 seeds on linux-6.1,
# timed with gc.callbacks); 20,000 spends 3%.  Cycles are still collected, only less often.
FUZZ_GC_THRESHOLDS = (20_000, 20, 10)


@contextlib.contextmanager
def fuzz_gc() -> Iterator[None]:
    """The collector's thresholds for the fuzz loop (FUZZ_GC_THRESHOLDS) inside the block; what
    measures the loop (bench/throughput.py) runs it the same way."""
    previous = gc.get_threshold()
    gc.set_threshold(*FUZZ_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def worker_main(config: CampaignConfig, worker_id: int, corpus: list[tuple[str, Scenario]],
                results: multiprocessing.Queue, stop: multiprocessing.Event, parent: int | None = None) -> None:
    """Entry point of a worker process: batches of results every BATCH_SECONDS."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent decides when to stop
    orphaned = _guard_against_orphaning(os.getppid() if parent is None else parent)
    worker = Worker(config, worker_id, corpus)
    quota = worker.quota()
    done = runs = invalid = total = 0
    items: list[Item] = []
    last = time.monotonic()
    try:
        with fuzz_gc():
            while not stop.is_set() and (quota is None or total < quota) and not orphaned():
                n, r, bad, new = worker.step()
                total += n
                done += n
                runs += r
                invalid += bad
                items += new
                now = time.monotonic()
                if now - last >= BATCH_SECONDS or items:
                    results.put(("batch", worker_id, done, runs, invalid, items))
                    done = runs = invalid = 0
                    items = []
                    last = now
    finally:
        try:
            if orphaned():
                # nobody reads the queue any more: do not wait to flush it at exit
                results.cancel_join_thread()
            else:
                results.put(("batch", worker_id, done, runs, invalid, items))
                results.put(("done", worker_id, 0, 0, 0, []))
        finally:
            worker.pool.close()


# ---------------------------------------------------------------------------
# The campaign (parent side)
# ---------------------------------------------------------------------------
def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Campaign:
    def __init__(self, config: CampaignConfig, status: TextIO | None = sys.stderr,
                 warn: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.status = status
        self.warn = warn or (lambda line: print(line, file=sys.stderr))
        self.stats = Stats()
        self.features: set[str] = set()
        self.corpus: list[tuple[str, Scenario]] = []
        self.written_per_signature: Counter[str] = Counter()
        self.first_findings: dict[str, Path | None] = {}
        self._last_status = 0.0
        self.interrupted = False
        self.stop_signal: int | None = None     # SIGINT or SIGTERM, when one stopped the campaign
        self._status_is_tty = bool(status is not None and hasattr(status, "isatty") and status.isatty())

    # -- corpus -------------------------------------------------------------
    def load_corpus(self) -> None:
        if self.config.corpus is None:
            return
        self.config.corpus.mkdir(parents=True, exist_ok=True)
        from bpfdiff.fuzz.corpus import load_corpus

        for entry in load_corpus([self.config.corpus], warn=self.warn):
            self.corpus.append((str(entry.path), entry.scenario))
            self.features |= entry.features
        self.stats.corpus_size = len(self.corpus)

    def add_to_corpus(self, item: Item) -> None:
        if self.config.corpus is None or item.scenario is None or item.features <= self.features:
            return
        self.features |= item.features
        text = format_scenario(item.scenario)
        path = self.config.corpus / f"gen-{_digest(text)}{SUFFIX}"
        if not path.exists():
            _atomic_write_text(path, text)
        self.stats.corpus_size += 1

    # -- findings -------------------------------------------------------------
    def record_finding(self, item: Item) -> None:
        finding = item.finding
        assert finding is not None
        stats = self.stats
        stats.findings[finding.kind] += 1
        first = finding.signature not in stats.signatures
        stats.signatures[finding.signature] = stats.signatures.get(finding.signature, 0) + 1
        if first:
            self.first_findings[finding.signature] = None
        written = self.written_per_signature[finding.signature]
        if self.config.crashes is None or item.scenario is None or written >= self.config.max_per_signature:
            return
        self.written_per_signature[finding.signature] += 1
        path = self.save_finding(item)
        stats.saved.append(path)
        if first:
            self.first_findings[finding.signature] = path

    def finding_meta(self, item: Item) -> tuple[tuple[str, str], ...]:
        assert item.finding is not None
        assert item.scenario is not None
        keep = [(k, v) for k, v in item.scenario.meta if k not in ("profile", "inject", "signature", "origin")]
        # no inject entry when no bug is planted: the finding is a real disagreement
        inject = (("inject", ",".join(sorted(self.config.inject))),) if self.config.inject else ()
        return (("profile", self.config.profile),) + inject + (
            ("signature", item.finding.signature), ("origin", item.origin.replace(" ", "_")),
            ("engines", ",".join(self.config.engines))) + tuple(keep)

    def save_finding(self, item: Item) -> Path:
        finding = item.finding
        assert finding is not None and self.config.crashes is not None and item.scenario is not None
        scenario = replace(item.scenario, expect=None, meta=self.finding_meta(item))
        text = format_scenario(scenario)
        stem = f"{finding.kind}-{_digest(finding.signature)[:8]}-{_digest(text)[:8]}"
        path = self.config.crashes / f"{stem}{SUFFIX}"
        _atomic_write_text(path, text)
        inject = ",".join(sorted(self.config.inject)) or "none"
        report = [
            f"signature: {finding.signature}",
            f"kind: {finding.kind}",
            f"found: {item.origin}, profile {self.config.profile}, inject {inject}",
            f"event: {finding.event_index}   field: {finding.field}",
            "values: " + ", ".join(f"{e}={v}" for e, v in finding.values.items()),
            "",
            finding.detail,
            "",
            f"replay: bpfdiff run {path}",
            f"minimise: bpfdiff minimize {path}",
        ]
        _atomic_write_text(path.with_suffix(".txt"), "\n".join(report) + "\n")
        return path

    def absorb(self, done: int, runs: int, invalid: int, items: list[Item]) -> None:
        self.stats.scenarios += done
        self.stats.engine_runs += runs
        self.stats.invalid += invalid
        for item in items:
            if item.kind == "finding":
                self.record_finding(item)
            else:
                self.add_to_corpus(item)

    # -- status ---------------------------------------------------------------
    def status_line(self) -> str:
        s = self.stats
        t = max(s.elapsed, 1e-9)
        return (f"[fuzz {self.config.profile}] {s.elapsed:6.1f}s  scenarios {s.scenarios} ({s.scenarios / t:.0f}/s)  "
                f"runs {s.engine_runs} ({s.engine_runs / t:.0f}/s)  divergences {s.divergences}  "
                f"findings {sum(s.findings.values())} (known kernel bugs {s.findings[KNOWN]})  "
                f"signatures {len(s.signatures)}  corpus {s.corpus_size}")

    def show_status(self, force: bool = False) -> None:
        if self.status is None:
            return
        now = time.monotonic()
        interval = 0.5 if self._status_is_tty else 5.0
        if not force and now - self._last_status < interval:
            return
        self._last_status = now
        if self._status_is_tty:
            self.status.write("\r\x1b[K" + self.status_line())
        else:
            self.status.write(self.status_line() + "\n")
        self.status.flush()

    def time_up(self) -> bool:
        return self.config.time_limit is not None and self.stats.elapsed >= self.config.time_limit

    # -- running ----------------------------------------------------------------
    def run(self) -> Stats:
        """Run to the end (time, runs) or Ctrl-C; return the statistics."""
        if self.config.crashes is not None:
            self.config.crashes.mkdir(parents=True, exist_ok=True)
        self.load_corpus()
        self.stats.started = time.monotonic()
        # Ctrl-C and SIGTERM set a flag instead of raising, so that no file
        # write is cut short; the loops stop at the next scenario.  A second
        # one raises.
        previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous[signum] = signal.signal(signum, self._on_stop_signal)
        try:
            if self.config.jobs <= 1:
                self.run_inline()
            else:
                self.run_workers()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.status is not None and self._status_is_tty:
                self.status.write("\r\x1b[K")
        return self.stats

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self.stop_signal = signum

    def run_inline(self) -> None:
        worker = Worker(self.config, 0, self.corpus)
        quota = worker.quota()
        try:
            with fuzz_gc():
                while (quota is None or self.stats.scenarios < quota) and not self.time_up() \
                        and not self.interrupted:
                    done, runs, invalid, items = worker.step()
                    self.absorb(done, runs, invalid, items)
                    self.show_status()
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            worker.pool.close()

    def run_workers(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        stop = ctx.Event()
        procs = [ctx.Process(target=worker_main, args=(self.config, w, self.corpus, results, stop, os.getpid()),
                             daemon=True)
                 for w in range(self.config.jobs)]
        for proc in procs:
            proc.start()
        running = len(procs)
        try:
            while running:
                if self.time_up() or self.interrupted:
                    stop.set()
                try:
                    kind, _, done, runs, invalid, items = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(p.is_alive() for p in procs):
                        break
                    self.show_status()
                    continue
                if kind == "done":
                    running -= 1
                self.absorb(done, runs, invalid, items)
                self.show_status()
        except KeyboardInterrupt:
            self.interrupted = True
            stop.set()
            self.drain(results, procs, running)
        finally:
            stop.set()
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()

    def drain(self, results: multiprocessing.Queue, procs: list, running: int) -> None:
        """After Ctrl-C: collect what the workers still send (their last batches)."""
        deadline = time.monotonic() + 10
        while running and time.monotonic() < deadline:
            try:
                kind, _, done, runs, invalid, items = results.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            except KeyboardInterrupt:
                break
            if kind == "done":
                running -= 1
            self.absorb(done, runs, invalid, items)

    def summary(self) -> str:
        s = self.stats
        t = max(s.elapsed, 1e-9)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s.findings.items())) or "none"
        lines = [
            f"{'interrupted' if self.interrupted else 'done'} after {s.elapsed:.1f}s: {s.scenarios} scenarios "
            f"({s.scenarios / t:.1f}/s), {s.engine_runs} engine runs ({s.engine_runs / t:.1f}/s), "
            f"{s.invalid} invalid skipped, corpus {s.corpus_size}",
            f"findings: {sum(s.findings.values())} ({kinds}), {len(s.signatures)} distinct signatures; "
            f"new: {s.new_findings} (known kernel bugs of the profile are not new)",
        ]
        for signature, count in sorted(s.signatures.items()):
            path = self.first_findings.get(signature)
            lines.append(f"  {count:5d}  {signature}" + (f"  -> {path}" if path else ""))
        return "\n".join(lines)

