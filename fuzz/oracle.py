"""The differential oracle: run one scenario on several engines, turn disagreements into findings.

``run_oracle(scenario, engines=("interp", "jit"), profile="linux-6.1",
bugs=frozenset(), pool=None) -> Verdict``, for any subset of two or more
engines.  Each field is compared only among the engines that observe it
(:attr:`bpfdiff.engine.Engine.observes`; R0 on the low ``min(r0_bits)``
bits); an engine that raises :class:`~bpfdiff.engine.EngineUnsupported` is
left out of the comparison (a note in :attr:`Verdict.notes`).  Kinds of
:class:`Finding`:

``divergence``
    the engines' outcomes differ (:func:`bpfdiff.compare.compare_outcomes`,
    the one place outcomes are compared): per run event exit kind, R0, fault
    kind/pc, tail-call count, program trace, maps and memory; per map event
    the return code;
``violation``
    an engine's self-check failed after an event
    (:attr:`EventOutcome.violations`, e.g. a JIT poke site whose bytes do not
    match its slot) -- a finding even when the results agree;
``known``
    a divergence that the profile's real kernel has: fixing one of the
    profile's known kernel bugs (:class:`bpfdiff.profiles.KernelBug`) makes
    it disappear -- the bug rediscovered, not a new one;
``refused``
    some engines refused to load a program
    (:class:`~bpfdiff.engine.ProgramRefused`, e.g. the real verifier) that the
    others loaded and ran: a fidelity finding (our verifier model and the
    kernel's disagree), not a JIT bug.  When every engine refuses, the input
    is invalid and the refusal propagates;
``crash``
    an engine raised a Python exception (anything but ``EngineError``, which
    means "this engine cannot take this input" and propagates).

Signatures are what crash directories are bucketed by (``bpfdiff triage``):
stable across findings of one bug, different between bugs.  A divergence's
signature is ``divergence:PROFILE:WHAT:RELATION:SITES``:

* WHAT -- ``control`` when a control field (:data:`CONTROL_FIELDS`: exit,
  fault kind, trace, tail-call count, ...) differs at the first diverging
  event -- R0, maps and memory are then consequences --, ``data`` when only
  R0 / maps / memory differ, ``retval`` for a map operation's return code.
  One bug can show as a fault on one input and as a wrong trace on another,
  so the control fields are not told apart;
* SITES -- which tail-call sites are involved, by a probe: the JIT engine is
  run again with every tail call forced indirect; ``direct`` when that makes
  the divergence go away (the bug is in the patched direct sites), ``any``
  when it stays;
* RELATION -- for ``direct``: ``jit@`` and the map event that exposed it,
  ``delete`` or ``retarget`` (see :func:`trigger_event`; else ``fill``); otherwise, by
  what-if probes (:data:`WHAT_IF_MODELS`), ``ENGINE@MODEL`` when that engine
  runs exactly like the clean interpreter under a changed counter rule --
  MAX_TAIL_CALL_CNT one higher or lower, or a counter that restarts at zero in
  every subprogram -- and not like it under the profile's own rule (when no
  model alone does: under a model together with a known kernel bug the profile
  still has, as the interpreter can run it, ``KernelBug.reference_as_bug`` --
  a limit off by one in a hierarchy whose counter 116e04ba1459 copies); else
  ``other`` (``-`` for ``data`` divergences; without probes, from the counts:
  ``limit+1``/``limit-1``/``count``/``-``).  With three or more engines,
  when one engine stands alone against all the others
  (:func:`bpfdiff.compare.odd_one_out`) RELATION names it (``jit@TRIGGER``
  for a direct site), ``ENGINE@MODEL`` when a what-if model explains that
  engine, else ``ENGINE@odd``; with no odd one out, it is found as for two.
  Two engines, one of them the reference interpreter, and nothing that
  explains them: the other one, ``ENGINE@ref``.

The name is found first on the profile with all its known kernel bugs fixed,
when the divergence remains there (what is left once the kernel's own bugs are
taken out), and on the profile as it is when no probe explains it there.

Refusals: ``refused:PROFILE:ENGINE[+ENGINE...]:<first words of the message,
numbers replaced by N>`` naming the engines that refused.
Crashes: ``crash:PROFILE:ENGINE:ExceptionType@module.function`` (innermost
frame inside bpfdiff); violations: ``violation:PROFILE:ENGINE:<text with
numbers replaced by N>``.
"""

from __future__ import annotations

import itertools
import re
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from bpfdiff.fuzz.checker import tail_call_sites

from bpfdiff.bugs import bugs_for, validate_bugs
from bpfdiff.compare import Difference, Observation, compare_outcomes, format_value, odd_one_out
from bpfdiff.engine import (
    Engine,
    EngineError,
    EngineUnsupported,
    EventOutcome,
    ProgramRefused,
    make_engine,
)
from bpfdiff.profiles import KernelBug, Profile, get_profile, unfixed_kernel_bugs, with_kernel_bug_fixed
from bpfdiff.scenario import Delete, Run, Scenario, Update, key_u32

DIVERGENCE, CRASH, VIOLATION, KNOWN, REFUSED = "divergence", "crash", "violation", "known", "refused"
# Findings that mean "bpfdiff or an engine is wrong" -- what a campaign fails on.
# A KNOWN finding is a divergence the profile's real kernel has (Profile.kernel_bugs).
# A REFUSED one says our verifier model accepts what a real verifier refuses (or back).
NEW_KINDS = (DIVERGENCE, CRASH, VIOLATION, REFUSED)
# The words of a refusal message that name it in a signature.
REFUSAL_WORDS = 8
# Control fields in the order that names a divergence: the first one that differs wins
# (a different exit explains a different trace, a different trace a different count).
CONTROL_FIELDS = ("events", "kind", "run", "retval", "exit", "fault_kind", "trace", "tail_calls", "fault_pc")
DATA_FIELDS = ("r0", "maps", "mem")
PROBE_OPTIONS = {"force_indirect": True}
_PROFILE_FIELDS = tuple(f.name for f in fields(Profile))
# What-if variants of the reference interpreter a divergence is held against
# (name -> profile changes as a function of the profile): the tail-call limit
# off by one either way, and the counter lost across bpf-to-bpf calls.
# The first model that explains a divergence names it.  A chain that enters a
# subprogram after exactly one tail call cannot tell a lost counter from a
# limit one higher (both give one extra call); the subprogram model goes first
# because on such chains it is the likelier cause, while a limit bug shows on
# every self loop.
WHAT_IF_MODELS: tuple[tuple[str, Any], ...] = (
    ("subprog-reset", lambda p: {"subprog_counter": "reset"} if p.tail_calls_in_subprogs else None),
    ("limit+1", lambda p: {"max_tail_call_cnt": p.max_tail_call_cnt + 1}),
    ("limit-1", lambda p: {"max_tail_call_cnt": p.max_tail_call_cnt - 1}),
)


@dataclass(frozen=True)
class Finding:
    kind: str                      # divergence, crash or violation
    signature: str
    event_index: int | None
    field: str | None
    values: dict[str, str]         # engine -> its value, formatted
    detail: str
    # With three or more engines: the engine that stands alone against the others.
    odd: str | None = None
    # Other signatures that explain this finding just as well (two what-if models
    # give identical outcomes on this input): triage joins it to one of their buckets.
    alternatives: tuple[str, ...] = ()


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)
    outcomes: dict[str, list[EventOutcome]] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)   # engine -> time spent in execute()
    # What each engine that ran observes (compared fields, R0 width).
    observations: dict[str, Observation] = field(default_factory=dict)
    # Engines left out and why (EngineUnsupported), refusals of the input by every engine.
    notes: list[str] = field(default_factory=list)

    def compare(self, outcomes: dict[str, list[EventOutcome]]) -> list[Difference]:
        """``compare_outcomes`` with the observations of the engines of this verdict."""
        return compare_outcomes(outcomes, self.observations)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def signature(self) -> str:
        """The primary (first) finding's signature; empty when ok."""
        return self.findings[0].signature if self.findings else ""

    @property
    def divergences(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == DIVERGENCE]

    @property
    def new_findings(self) -> list[Finding]:
        """Findings that are not a known bug of the profile's kernel."""
        return [f for f in self.findings if f.kind in NEW_KINDS]


class EnginePool:
    """Engine instances reused across scenarios, keyed by engine, profile, bugs and options.

    An engine holds a unicorn machine (the JIT) or decoded programs; creating
    one per scenario would dominate the fuzzer's time.
    """

    def __init__(self) -> None:
        self._engines: dict[tuple, Engine] = {}

    @staticmethod
    def key(name: str, profile: str, bugs: frozenset[str], options: dict[str, Any]) -> tuple:
        return name, profile, bugs_for(name, bugs), tuple(sorted(options.items()))

    def get(self, name: str, profile: str, bugs: frozenset[str], **options: Any) -> Engine:
        key = self.key(name, profile, bugs, options)
        engine = self._engines.get(key)
        if engine is None:
            engine = make_engine(name, profile=profile, bugs=key[2], **options)
            self._engines[key] = engine
        return engine

    def what_if_interp(self, profile: str, model: str, with_bug: KernelBug | None = None) -> Engine | None:
        """The clean interpreter under a what-if counter rule (a signature probe), or None
        when the model does not apply to the profile; ``with_bug``: also running as that
        known kernel bug of the profile does (its ``reference_as_bug``), None when the model
        overrides all of that (the model alone, asked already)."""
        key = ("interp", profile, frozenset(), (("what_if", model),
                                                ("with", with_bug.commit if with_bug else None)))
        engine = self._engines.get(key)
        if engine is None:
            base = get_profile(profile)
            changes = dict(WHAT_IF_MODELS)[model](base)
            if changes is None:
                return None
            if with_bug is not None:
                as_bug = dict(with_bug.reference_as_bug)
                if as_bug.keys() <= changes.keys():
                    return None         # the model sets every field the bug would: the model alone
                changes = {**as_bug, **changes}
            engine = make_engine("interp", profile=base.with_options(**changes))
            self._engines[key] = engine
        return engine

    def discard(self, name: str, profile: str, bugs: frozenset[str], **options: Any) -> None:
        """Drop an engine (after it crashed: its state is not trusted any more)."""
        engine = self._engines.pop(self.key(name, profile, bugs, options), None)
        if engine is not None:
            try:
                engine.close()
            except Exception:  # noqa: BLE001 - closing a broken engine must not hide the crash
                pass

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


_DEFAULT_POOL = EnginePool()


# ---------------------------------------------------------------------------
def crash_signature(exc: BaseException, engine: str, profile: str) -> str:
    """Exception type plus the innermost frame inside bpfdiff, or where the exception says it
    happened (``crash_site``: a guest kernel's own words)."""
    where = getattr(exc, "crash_site", None)
    for frame in reversed(traceback.extract_tb(exc.__traceback__) if where is None else []):
        module = _module_of(frame.filename)
        if module is not None:
            where = f"{module}.{frame.name}"
            break
    where = where or "?"
    return f"{CRASH}:{profile}:{engine}:{type(exc).__name__}@{where}"


def crash_finding(exc: BaseException, engine: str, profile: str, note: str = "",
                  unattributed: bool = False) -> Finding:
    """An engine that crashed: a CRASH finding; a guest kernel that died brings how it ended
    (``console_excerpt``).  ``unattributed``: a death no request of the scenario is blamed for
    (the engine said why in ``note``), signed apart."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if note:
        detail = f"{note[:300]}\n{detail}"
    console = getattr(exc, "console_excerpt", "")   # a guest kernel that died: how it ended
    if console:
        detail = f"{detail[:800]}\n-- the guest's console --\n{console}"
    signature = crash_signature(exc, engine, profile)
    if unattributed:
        signature = signature.replace("@", "@unattributed:", 1)
    return Finding(CRASH, signature, None, None, {engine: f"{type(exc).__name__}: {exc}"[:300]}, detail[:2000])


def _module_of(filename: str) -> str | None:
    """``bpfdiff.jit.emulator`` for .../jit/emulator.py (the repository's folder layout)."""
    parts = re.split(r"[\\/]", filename)
    for top, package in (("bpfdiff", "bpfdiff"), ("interp", "bpfdiff.interp"), ("jit", "bpfdiff.jit"),
                         ("fuzz", "bpfdiff.fuzz")):
        if top in parts[:-1]:
            i = len(parts) - 1 - parts[::-1].index(top)
            rest = parts[i + 1:]
            rest[-1] = rest[-1].removesuffix(".py")
            if top == "bpfdiff" and rest[0] in ("interp", "jit", "fuzz"):
                return ".".join(["bpfdiff"] + rest)
            return ".".join([package] + rest)
    return None


# x86 byte patterns a poke-site self-check prints, by what they are
PATCH_BYTES = ((re.compile(r"\be9[0-9a-f]{8}\b"), "jmp"), (re.compile(r"\b0f1f440000\b"), "nop"),
               (re.compile(r"\beb[0-9a-f]{2}\b"), "shortjmp"))


# Self-checks that say the same thing in different words, by what they mean.
VIOLATION_MEANINGS = (
    (re.compile(r"wrong offset into it|not at its tail-call entry"),
     "tail call lands at the wrong offset into its target"),
)


def violation_signature(text: str, engine: str, profile: str) -> str:
    """The violation's text without program name, addresses and numbers; patch bytes by what they are."""
    for pattern, meaning in VIOLATION_MEANINGS:
        if pattern.search(text):
            return f"{VIOLATION}:{profile}:{engine}:{meaning}"
    shape = re.sub(r"^[\w.-]+: ", "", text.strip())
    for pattern, word in PATCH_BYTES:
        shape = pattern.sub(word, shape)
    shape = re.sub(r"= (?!empty\))[\w-]+\)", "= prog)", shape)     # which program a slot holds
    shape = re.sub(r"(right program|jumps into|instead of) [\w-]+", r"\1 prog", shape)
    shape = re.sub(r"0x[0-9a-fA-F]+|\d+", "N", shape)
    return f"{VIOLATION}:{profile}:{engine}:{shape[:120]}"


def allowed_tail_calls(profile: Profile) -> int:
    """How many tail calls one chain may take under the profile (33 for both modelled kernels)."""
    return profile.max_tail_call_cnt + (1 if profile.interp_limit_test == "gt" else 0)


def tail_call_relation(values: dict[str, Any], profile: Profile) -> str:
    counts = sorted(v for v in values.values() if isinstance(v, int))
    if len(counts) < 2 or counts[0] == counts[-1]:
        return "-"
    allowed = allowed_tail_calls(profile)
    if (counts[0], counts[-1]) == (allowed, allowed + 1):
        return "limit+1"
    if (counts[0], counts[-1]) == (allowed - 1, allowed):
        return "limit-1"
    return "count"


def first_event_differences(differences: Sequence[Difference]) -> list[Difference]:
    first = min(d.event_index for d in differences)
    return [d for d in differences if d.event_index == first]


def divergence_what(diffs: Sequence[Difference]) -> str:
    fields = {d.field for d in diffs}
    if fields & {"events", "kind", "run", "retval"}:
        return "retval" if fields & {"retval"} else "events"
    return "control" if fields & set(CONTROL_FIELDS) else "data"


def trigger_event(scenario: Scenario, outcomes: dict[str, list[EventOutcome]], index: int,
                  profile: Profile) -> str:
    """For a direct-site divergence: the map event that exposed it, ``delete`` or ``retarget``.

    A poke bug shows at the first run through the site after the map event it
    mishandled.  Suspects are the deletes and retargets of a slot that a
    direct site of the diverging run uses, after the last run that went
    through those sites and still agreed; the earliest suspect is named (a
    stale site can also make later, correct pokes fail).  ``fill`` when
    there is none.
    """
    from bpfdiff.fuzz.corpus import event_kinds

    named = trigger_from_violations(outcomes, index)
    if named is not None:
        return named
    names = _programs_of_run(scenario, outcomes, index)
    site_progs: set[str] = set()
    keys: set[tuple[str, bytes]] = set()
    for prog in scenario.programs:
        if prog.name in names:
            for site in tail_call_sites(prog, scenario, profile):
                if site.direct and site.key is not None:
                    keys.add((site.map, key_u32(site.key)))
                    site_progs.add(prog.name)
    last_good = -1
    for j in range(min(index, len(scenario.events))):
        if site_progs & _programs_of_run(scenario, outcomes, j):
            last_good = j
    kinds = event_kinds(scenario)
    for j in range(last_good + 1, min(index, len(scenario.events))):
        event = scenario.events[j]
        if isinstance(event, Update | Delete) and (event.map, event.key) in keys \
                and kinds[j] in ("prog_array.delete", "prog_array.retarget"):
            return kinds[j].split(".", 1)[1]
    return "fill"


TRIGGERS = ("delete", "retarget", "fill")

# What a poke-site self-check says about the slot, and the map event it means:
# a site still jumping although its slot is empty was not patched on delete;
# one jumping to the wrong program was not patched on retarget; one still a
# nop although its slot holds a program was not patched on fill.  (Failed
# text pokes are consequences of an earlier stale site, not causes.)
VIOLATION_TRIGGERS = (
    (re.compile(r"= empty\) holds jmp"), "delete"),
    (re.compile(r"bypass at \S+ \([^)]*= empty\) holds nop"), "delete"),
    (re.compile(r"site at \S+ \([^)]*= [\w-]+\) holds jmp\w*, expected jmp\w* \(jumps into"), "retarget"),
    (re.compile(r"site at \S+ \([^)]*= [\w-]+\) holds nop"), "fill"),
    (re.compile(r"bypass at \S+ \([^)]*= (?!empty\))[\w-]+\) holds jmp"), "fill"),
)


# Self-checks that report the consequence of an earlier failure, not a cause of their own:
# a text poke refused (-EBUSY) because the site does not hold what it should.
CONSEQUENCES = re.compile(r"^violation:[^:]*:[^:]*:text poke of .* failed")


def is_consequence(signature: str) -> bool:
    """Whether a signature is a consequence of another finding (see :data:`CONSEQUENCES`)."""
    return bool(CONSEQUENCES.search(signature))


# What a self-check failure says went wrong, as the short word a divergence signature names
# it by (``jit@landing``): the poke triggers of :data:`VIOLATION_TRIGGERS` first, then these.
VIOLATION_TAGS = (
    (re.compile(r"wrong offset into it|not at its tail-call entry"), "landing"),
    (re.compile(r"entered after \S+ tail calls, but its counter"), "counter"),
)


def violation_tag(outcomes: dict[str, list[EventOutcome]], index: int, only: str | None = None
                  ) -> tuple[str, str] | None:
    """(engine, tag) of the earliest self-check failure up to event ``index`` that says what went
    wrong -- a poke trigger (``delete``...), a tail call landing at the wrong offset (``landing``),
    a counter that does not hold the count (``counter``) -- or None.  The engine's own self-check
    is better evidence than any what-if model: it names the divergence when no direct-site probe does."""
    for name, seq in outcomes.items():
        if only is not None and name != only:
            continue
        texts = [text for outcome in seq[:index + 1] for text in outcome.violations]
        shapes = [violation_signature(text, "", "") for text in texts]
        for pattern, trigger in VIOLATION_TRIGGERS:
            if any(pattern.search(shape) for shape in shapes):
                return name, trigger
        for pattern, tag in VIOLATION_TAGS:
            if any(pattern.search(text) for text in texts):
                return name, tag
    return None


def trigger_from_violations(outcomes: dict[str, list[EventOutcome]], index: int) -> str | None:
    """The map event the earliest poke-site self-check failure up to ``index`` points at, if any."""
    for seq in outcomes.values():
        for outcome in seq[:index + 1]:
            for text in outcome.violations:
                shape = violation_signature(text, "", "")
                for pattern, trigger in VIOLATION_TRIGGERS:
                    if pattern.search(shape):
                        return trigger
    return None


def _programs_of_run(scenario: Scenario, outcomes: dict[str, list[EventOutcome]], index: int) -> set[str]:
    names: set[str] = set()
    for seq in outcomes.values():
        if index < len(seq) and seq[index].run is not None:
            names.update(seq[index].run.trace)
    event = scenario.events[index] if index < len(scenario.events) else None
    if isinstance(event, Run):
        names.add(event.prog)
    return names


# ---------------------------------------------------------------------------
def run_oracle(scenario: Scenario, engines: Sequence[str] = ("interp", "jit"), profile: str = "linux-6.1",
               bugs: frozenset[str] = frozenset(), pool: EnginePool | None = None, probe: bool = True) -> Verdict:
    """Run ``scenario`` on every engine and report what they disagree on.

    ``EngineError`` (an engine refuses the input) propagates: it is not a
    finding -- except :class:`ProgramRefused` on some engines only (a
    ``refused`` finding) and :class:`EngineUnsupported` (the engine is left
    out, noted).  ``probe`` re-runs a diverging scenario with the JIT's tail
    calls forced indirect to tell direct-site bugs apart, and the what-if
    interpreters (see the module docstring).
    """
    pool = pool or _DEFAULT_POOL
    bugs = validate_bugs(frozenset(bugs))
    prof = get_profile(profile)
    verdict = Verdict()
    crashes: list[Finding] = []
    refusals: dict[str, ProgramRefused] = {}
    for name in engines:   # engines in a VM start now and run while ours do
        try:
            pool.get(name, profile, bugs).submit(scenario)
        except Exception:  # noqa: BLE001, S110 - execute() below raises it again, where it is handled
            pass
    bad_input: EngineError | None = None
    for name in engines:
        started = time.perf_counter()
        engine = None
        try:
            engine = pool.get(name, profile, bugs)
            verdict.outcomes[name] = engine.execute(scenario)
            verdict.observations[name] = Observation.of(engine)
        except EngineUnsupported as exc:
            verdict.notes.append(f"{name} left out: {exc}")
        except ProgramRefused as exc:
            refusals[name] = exc
        except EngineError as exc:
            # Bad input, not a finding -- raised once every engine has run, so that what an engine
            # in a VM started on it is collected: a guest that died serving it is still a crash.
            bad_input = bad_input or exc
        except Exception as exc:  # noqa: BLE001 - an engine crash is a finding
            pool.discard(name, profile, bugs)
            crashes.append(crash_finding(exc, name, profile))
        finally:
            verdict.seconds[name] = time.perf_counter() - started
            for note, death in engine.take_incidents() if engine is not None else ():
                # the engine's machinery died and was replaced on the way: said, and a death that
                # no request of its own is blamed for is a crash finding here, never dropped
                verdict.notes.append(note)
                if death is not None:
                    crashes.append(crash_finding(death, name, profile, note, unattributed=True))
    if bad_input is not None:
        if not crashes:
            raise bad_input
        verdict.notes.append(f"bad input: {bad_input}")
        verdict.outcomes.clear()
        refusals.clear()
    if refusals and not verdict.outcomes and not crashes:
        # Every engine refused: the input is not a valid program, not a finding.
        raise next(iter(refusals.values()))
    differences = verdict.compare(verdict.outcomes)
    verdict.differences = differences
    if differences:
        fixed_runs: list[tuple[Profile, dict[str, list[EventOutcome]]]] = []
        known = known_kernel_bug(scenario, verdict, prof, bugs, pool, fixed_runs)
        verdict.findings.append(known or divergence_finding(scenario, verdict, prof, bugs, pool, probe,
                                                            fixed_runs))
    if refusals and verdict.outcomes:
        verdict.findings.append(refused_finding(refusals, list(verdict.outcomes), profile))
    elif refusals:
        verdict.notes += [f"{name}: {exc}" for name, exc in refusals.items()]
    for name, seq in verdict.outcomes.items():
        for outcome in seq:
            for text in outcome.violations:
                verdict.findings.append(Finding(VIOLATION, violation_signature(text, name, profile), outcome.index,
                                                None, {name: text}, f"event {outcome.index}: {name}: {text}"))
    verdict.findings += crashes
    return verdict


def refusal_shape(message: str) -> str:
    """The first words of a refusal message, numbers replaced by N: what names it in a signature."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    words = (lines[0] if lines else "").split()[:REFUSAL_WORDS]
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "N", " ".join(words)) or "?"


def refused_finding(refusals: dict[str, ProgramRefused], loaded: list[str], profile: str) -> Finding:
    """Some engines refused a program that the others (``loaded``) ran: a fidelity finding."""
    names = sorted(refusals)
    first = refusals[next(iter(refusals))]
    values = {name: f"refused {exc.prog}: {exc.message}"[:300] for name, exc in refusals.items()}
    values.update({name: "loaded" for name in loaded})
    detail = "\n".join([f"{name} refused program {exc.prog!r} (errno {exc.errno}): {exc.message}"
                        for name, exc in refusals.items()] + [f"loaded and ran by {', '.join(loaded)}"])
    odd = names[0] if len(names) == 1 and len(loaded) >= 2 else None
    return Finding(REFUSED, f"{REFUSED}:{profile}:{'+'.join(names)}:{refusal_shape(first.message)}", None, None,
                   values, detail[:2000], odd)


def known_kernel_bug(scenario: Scenario, verdict: Verdict, profile: Profile, bugs: frozenset[str],
                     pool: EnginePool, fixed_runs: list[tuple[Profile, dict[str, list[EventOutcome]]]] | None = None
                     ) -> Finding | None:
    """A KNOWN finding when fixing one of the profile's known kernel bugs makes the engines agree.

    The profile models its kernel faithfully, bugs included; a divergence that
    the kernel's own fix removes is that bug rediscovered, not a new one.  The
    fix applies to our models only: a real kernel (an engine that ``mirrors`` a
    model) stays as built, so it must instead agree with the model it mirrors
    as that model ran unfixed -- the kernel has the bug our model of it has.

    ``fixed_runs`` receives (when only models ran) each profile with some
    of the known bugs fixed and the models' outcomes on it, every bug fixed first, then from
    the most fixes to the fewest: what remains of the divergence without the kernel's own
    bugs, which :func:`divergence_finding` names first.
    """
    mirrors = {name: pool.get(name, profile.name, bugs).mirrors for name in verdict.outcomes}
    models = [name for name in verdict.outcomes if mirrors[name] is None]
    if not models:
        return None
    # each bug alone, then pairs, ... then all of them at once, so the fewest bugs that explain it
    # name it: one run can show two bugs (a tail-call count that 116e04ba1459 doubles and an R0
    # that d7ba4cc900bf truncates), which no single fix explains
    candidates = [together for size in range(1, len(profile.kernel_bugs) + 1)
                  for together in itertools.combinations(profile.kernel_bugs, size)]
    # An engine runs again only under a profile it can tell apart from every profile it ran this
    # scenario under: one that differs from such a run only in fields the run's outcomes did not
    # depend on (Engine.unaffected_profile_fields: the fields it ignores, and those it reads only
    # where the scenario never went with a value that matters) gives that run's outcomes.
    # The costlier question (against the profile to run under: do the verifier model's answers
    # change?) is asked only of a run that the plain answer leaves one field short of reusing;
    # every engine asked has run nothing else since (each profile has its own engine).
    ran: dict[str, list[tuple[Profile, Engine, frozenset[str], list[EventOutcome]]]] = {}

    def outcomes_under(name: str, fixed: str, fixed_profile: Profile) -> list[EventOutcome]:
        for run_profile, run_engine, unaffected, outcomes in ran[name]:
            rest = _differing_fields(run_profile, fixed_profile) - unaffected
            if not rest or rest <= run_engine.unaffected_profile_fields(against=fixed_profile):
                return outcomes
        engine = pool.get(name, fixed, bugs)
        outcomes = engine.execute(scenario)
        ran[name].append((fixed_profile, engine, engine.unaffected_profile_fields(), outcomes))
        return outcomes

    for name in models:
        engine = pool.get(name, profile.name, bugs)
        ran[name] = [(profile, engine, engine.unaffected_profile_fields(), verdict.outcomes[name])]
    for together in candidates:
        fixed = profile.name
        for bug in together:
            fixed = with_kernel_bug_fixed(fixed, bug.commit)
        fixed_profile = get_profile(fixed)
        try:
            outcomes = {name: outcomes_under(name, fixed, fixed_profile) for name in models}
        except Exception:  # noqa: BLE001 - the check only classifies a divergence
            continue
        if fixed_runs is not None and len(models) == len(mirrors):
            fixed_runs.append((fixed_profile, outcomes))
        if verdict.compare(outcomes):
            continue
        if all(_agrees_with_its_model(verdict, name, mirror, models) for name, mirror in mirrors.items()
               if mirror is not None):
            return known_finding(together, profile, verdict)
    if fixed_runs is not None:
        fixed_runs.reverse()       # every bug fixed first, then the most fixes to the fewest
    return None


def _differing_fields(a: Profile, b: Profile) -> frozenset[str]:
    return frozenset(f for f in _PROFILE_FIELDS if getattr(a, f) != getattr(b, f))


def _agrees_with_its_model(verdict: Verdict, name: str, mirror: str, models: list[str]) -> bool:
    """Whether real-kernel engine ``name`` gave what the (unfixed) model it mirrors gave; without
    that model in the campaign, what some model gave."""
    candidates = [mirror] if mirror in verdict.outcomes else models
    return any(not verdict.compare({name: verdict.outcomes[name], other: verdict.outcomes[other]})
               for other in candidates)


def known_finding(bugs: KernelBug | tuple[KernelBug, ...], profile: Profile, verdict: Verdict) -> Finding:
    together = bugs if isinstance(bugs, tuple) else (bugs,)
    diffs = first_event_differences(verdict.differences)
    primary = next((d for d in diffs if d.field in CONTROL_FIELDS), diffs[0])
    values = {engine: format_value(primary.field, value) for engine, value in primary.values.items()}
    commits = "+".join(bug.commit for bug in together)
    which = "; ".join(f"{bug.commit} (\"{bug.title}\"; introduced by {bug.introduced}, fixed in {bug.fixed_in})"
                      for bug in together)
    detail = (f"event {primary.event_index}: engines differ in {', '.join(d.field for d in diffs)} -- the known "
              f"kernel bug{'s' if len(together) > 1 else ''} {which}: with "
              f"{'their fixes' if len(together) > 1 else 'its fix'} applied ({profile.name}+{commits}) "
              "the engines agree")
    return Finding(KNOWN, f"{KNOWN}:{profile.name}:{commits}", primary.event_index, primary.field, values, detail)


def divergence_finding(scenario: Scenario, verdict: Verdict, profile: Profile, bugs: frozenset[str],
                       pool: EnginePool, probe: bool,
                       fixed: Sequence[tuple[Profile, dict[str, list[EventOutcome]]]] = ()) -> Finding:
    """A divergence finding: the values and detail of the divergence as it happened, the signature
    from :func:`name_divergence`.

    ``fixed`` (profiles with some of the known kernel bugs fixed, every one first, and the
    models' outcomes there) is what remains of the divergence without the kernel's own bugs:
    with every bug fixed it is named first -- a planted off-by-one in a tail-call hierarchy
    that 116e04ba1459 inflates is still ``limit+1`` -- and the divergence as it happened
    last, when the probes explain nothing before.  In between, what remains as a control
    divergence is named with fewer fixes, the most first: a fix can change what a planted bug
    does (with 116e04ba1459's counter pointer a count one over the limit reads as a pointer
    and faults, a counter reset is not emitted at all) while another known bug still blurs
    the divergence as it happened (d7ba4cc900bf's truncated R0 beside a count off by one).
    Only divergences of the class that remains with the most fixes are named: when only data
    differ there, a control divergence with fewer fixes is a known bug's (116e04ba1459's
    doubled count looks like the counter-reset model), not what is new.
    """
    diffs = first_event_differences(verdict.differences)
    index = diffs[0].event_index
    odd = odd_one_out(diffs) if len(verdict.outcomes) >= 3 else None
    variants: list[tuple[Profile, Verdict]] = []
    first_what = None          # the class of what remains with the most fixes
    for fixed_profile, outcomes in fixed if probe else ():
        fixed_verdict = Verdict(outcomes=outcomes, observations=verdict.observations)
        fixed_verdict.differences = fixed_verdict.compare(outcomes)
        remains = first_event_differences(fixed_verdict.differences)
        if not remains:
            continue
        what = divergence_what(remains)
        if first_what is None or what == first_what == "control":
            first_what = first_what or what
            variants.append((fixed_profile, fixed_verdict))
    if first_what is None or divergence_what(diffs) == first_what:
        variants.append((profile, verdict))
    named: list[DivergenceName] = []
    for variant_profile, variant in variants:
        named.append(name_divergence(scenario, variant, variant_profile, bugs, pool, probe))
        if named[-1].explained:
            break
    at = len(named) - 1 if named[-1].explained else 0
    name, chosen = named[at], variants[at]
    primary = next((d for d in diffs if d.field in CONTROL_FIELDS), diffs[0])
    values = {engine: format_value(primary.field, value) for engine, value in primary.values.items()}
    event = scenario.events[index] if index < len(scenario.events) else None
    lines = [f"event {index} ({_describe(event)}): engines differ in " + ", ".join(d.field for d in diffs)]
    if odd is not None:
        others = [engine for engine in verdict.outcomes if engine != odd]
        lines[0] += f"; {odd} stands alone against {', '.join(others)}"
    for d in diffs:
        shown = "  ".join(f"{e}={format_value(d.field, v)}" for e, v in d.values.items())
        lines.append(f"  {d.field}: {shown}"[:600])
    if chosen[0] is not profile and first_event_differences(chosen[1].differences) != diffs:
        lines.append(f"  named with the profile's known kernel bugs fixed ({chosen[0].name}), "
                     "where the divergence remains")
    base = f"{DIVERGENCE}:{profile.name}:{name.what}"
    alternatives = tuple(f"{base}:{other}:{name.sites}" for other in name.models[1:])
    return Finding(DIVERGENCE, f"{base}:{name.relation}:{name.sites}", index, primary.field,
                   values, "\n".join(lines), odd, alternatives)


@dataclass(frozen=True)
class DivergenceName:
    """What a divergence signature says: field class, relation (which engine, how), sites."""

    what: str
    relation: str
    sites: str
    models: tuple[str, ...] = ()     # the what-if models that explain it, first one named
    self_check: bool = False         # named by an engine's own self-check failure

    @property
    def explained(self) -> bool:
        """Whether a probe explained it (a direct site, a self-check, a what-if model), not a fallback."""
        return self.sites == "direct" or self.self_check or bool(self.models)


# The engine every other engine is held against when only two ran and no probe explains
# their divergence: the reference interpreter implements RFC 9669 (and passes the
# conformance suite), so the other engine is the one named, ``ENGINE@ref``.
REFERENCE_ENGINE = "interp"


def name_divergence(scenario: Scenario, verdict: Verdict, profile: Profile, bugs: frozenset[str],
                    pool: EnginePool, probe: bool) -> DivergenceName:
    """Name the first diverging event of ``verdict`` (see the module docstring)."""
    diffs = first_event_differences(verdict.differences)
    index = diffs[0].event_index
    what = divergence_what(diffs)
    odd = odd_one_out(diffs) if len(verdict.outcomes) >= 3 else None
    # Forcing the JIT's tail calls indirect can only explain a divergence the JIT is part of.
    jit_suspect = odd is None or odd == "jit"
    sites = probe_sites(scenario, verdict, profile, bugs, pool, index) if probe and jit_suspect else "any"
    models: list[str] = []
    tag = violation_tag(verdict.outcomes, index, odd) if sites != "direct" else None
    if sites == "direct":
        # the JIT's direct sites are what diverges: the JIT is wrong, whichever engine stands alone
        relation = f"jit@{trigger_event(scenario, verdict.outcomes, index, profile)}"
    elif tag is not None:
        relation = f"{tag[0]}@{tag[1]}"
        if tag[1] in TRIGGERS:
            sites = "direct"        # the self-check says a direct site holds the wrong bytes
    elif odd is not None:
        models = what_if_models(scenario, verdict, profile, pool, index, only=odd) \
            if probe and what == "control" else []
        relation = models[0] if models else f"{odd}@odd"
    else:
        counts = next((d.values for d in diffs if d.field == "tail_calls"), {})
        if what == "control" and probe:
            # the counts alone would split one bug into several buckets (they depend on the input)
            models = what_if_models(scenario, verdict, profile, pool, index)
            relation = models[0] if models else "other"
        elif what == "control":
            relation = tail_call_relation(counts, profile)
        else:
            relation = "-"
        engines = sorted(verdict.outcomes)
        if not models and probe and len(engines) == 2 and REFERENCE_ENGINE in engines:
            other = next(engine for engine in engines if engine != REFERENCE_ENGINE)
            relation = f"{other}@ref"
    return DivergenceName(what, relation, sites, tuple(models), tag is not None)


def _describe(event: object) -> str:
    if event is None:
        return "?"
    kind = type(event).__name__.lower()
    target = getattr(event, "prog", None) or getattr(event, "map", None)
    return f"{kind} {target}" if target else kind


def probe_sites(scenario: Scenario, verdict: Verdict, profile: Profile, bugs: frozenset[str],
                pool: EnginePool, index: int) -> str:
    """``direct`` if forcing every JIT tail call indirect removes the divergence, else ``any``."""
    if "jit" not in verdict.outcomes or len(verdict.outcomes) < 2:
        return "any"
    try:
        probe = pool.get("jit", profile.name, bugs, **PROBE_OPTIONS).execute(scenario)
    except Exception:  # noqa: BLE001 - the probe only refines a signature
        pool.discard("jit", profile.name, bugs, **PROBE_OPTIONS)
        return "any"
    others = {name: seq for name, seq in verdict.outcomes.items() if name != "jit"}
    still = [d for d in verdict.compare({**others, "jit": probe}) if d.event_index <= index]
    return "any" if still else "direct"


def probe_what_if(scenario: Scenario, verdict: Verdict, profile: Profile, pool: EnginePool,
                  index: int, only: str | None = None) -> str | None:
    """The first of :func:`what_if_models`, or None."""
    models = what_if_models(scenario, verdict, profile, pool, index, only)
    return models[0] if models else None


def what_if_models(scenario: Scenario, verdict: Verdict, profile: Profile, pool: EnginePool,
                   index: int, only: str | None = None) -> list[str]:
    """``ENGINE@MODEL`` for every what-if counter rule (:data:`WHAT_IF_MODELS`, in
    order) under which the clean interpreter runs like that engine where it does
    not under the profile's own rule (``only``: ask about that engine alone); the
    first names the finding, the others are alternatives (e.g. one tail call
    before a subprogram: a lost counter and a limit one higher look the same).

    A limit off by one shows as one tail call more or less wherever a chain
    reaches the limit -- how many calls that is in total depends on how many
    calls went through empty slots and subprograms, so the counts alone do
    not say it.  Each engine is held against the interpreters on the fields
    it observes.  When no model alone explains it, each model is tried again
    together with each known kernel bug the profile still has and the
    interpreter can run (``KernelBug.reference_as_bug``): a limit one higher
    in a hierarchy whose counter the kernel copies (116e04ba1459) gives
    neither count alone.
    """
    def agrees(a: list[EventOutcome], b: list[EventOutcome], name: str) -> bool:
        observations = {"b": verdict.observations[name]} if name in verdict.observations else {}
        return not [d for d in compare_outcomes({"a": a, "b": b}, observations) if d.event_index <= index]

    suspects = {name: seq for name, seq in verdict.outcomes.items() if only is None or name == only}
    found: list[str] = []
    # each model alone first; only when none explains it, each model on top of one known bug the
    # profile still has (the simpler explanation wins; the name is the model's, the bug is known)
    variants = [None] + [bug for bug in unfixed_kernel_bugs(profile) if bug.reference_as_bug]
    try:
        clean = pool.get("interp", profile.name, frozenset()).execute(scenario)
        for with_bug in variants:
            for model, _ in WHAT_IF_MODELS:
                engine = pool.what_if_interp(profile.name, model, with_bug)
                if engine is None:
                    continue
                what_if = engine.execute(scenario)
                for name, seq in suspects.items():
                    # once an engine is named, only other models of that engine are alternatives
                    if found and not found[0].startswith(f"{name}@"):
                        continue
                    if agrees(what_if, seq, name) and not agrees(clean, seq, name):
                        found.append(f"{name}@{model}")
                        break
            if found:
                break
    except Exception:  # noqa: BLE001 - the probe only refines a signature
        return found
    return found


def divergence_mechanism(signature: str) -> tuple[str, str, str] | None:
    """What a divergence signature says caused it, its field class left out: (profile, relation,
    sites) when the relation names a mechanism -- a poke trigger, a self-check tag, a what-if
    model (``jit@delete``, ``jit@landing``, ``jit@limit+1``) -- or only the engine that is wrong
    (``jit@ref``, ``kernel-jit@odd``: no model explains it); None when it names no engine.  One
    mechanism shows in control fields on one input and only in data on another: a stale site
    that jumps to a program which takes the same path, a wrong value that is returned on one
    input and on another steers a branch around a tail call (a 32-bit ALU result left without
    its zero extension: the tail-call index goes out of range), so the field class does not
    tell two bugs of one engine apart."""
    parts = signature.split(":")
    if len(parts) < 5 or parts[0] != DIVERGENCE:
        return None
    if "@" not in parts[3]:
        return None
    return parts[1], parts[3], parts[4]


def blamed_engine(signature: str) -> str | None:
    """The engine a signature says is wrong (``jit`` for ``divergence:P:control:jit@delete:direct``,
    the engine of a violation or crash, the refusing engines of a refusal); None when it names
    none (a known kernel bug, a divergence no probe could attribute)."""
    parts = signature.split(":")
    if len(parts) < 3:
        return None
    kind = parts[0]
    if kind == DIVERGENCE and len(parts) >= 5:
        relation = parts[3]
        if "@" in relation:
            return relation.split("@", 1)[0]
        return None
    if kind in (VIOLATION, CRASH, REFUSED):
        return parts[2]
    return None


def close_default_pool() -> None:
    _DEFAULT_POOL.close()

