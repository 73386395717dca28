"""Crash triage: replay every finding of a crash directory and group them into bugs.

Each finding is replayed with the profile and injected bugs its meta records
(the way it was found), and bucketed by the oracle's signature now.  A finding
that no longer diverges is *flaky*: it keeps a bucket of its own (keyed by the
signature it was recorded with, when its meta has one) and is never dropped.
A file that cannot be read at all is reported the same way, as its own flaky
bucket, with the reason.

Per bucket the smallest finding (BPF slots, then events, then name) is the
reproducer; with ``minimize`` it is shrunk further (:mod:`bpfdiff.fuzz.minimize`)
and the minimised scenario written next to the reports.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfdiff.scenario import Scenario

# Files a campaign writes next to findings that are not findings themselves.
NOT_FINDINGS = (".txt", ".md", ".html", ".json", ".tmp", ".log")
FLAKY_PREFIX = "flaky: "
UNREADABLE_SIGNATURE = "unreadable"


@dataclass
class FindingRecord:
    """One file of the crash directory, replayed."""

    path: Path
    scenario: Scenario | None
    profile: str
    bugs: frozenset[str]
    recorded_signature: str | None     # from the file's meta, when the campaign wrote one
    signature: str | None              # the oracle's signature now; None: engines agree
    first_seen: float                  # epoch seconds: meta "found"/"time", else file mtime
    error: str | None = None           # why the file could not be read or replayed
    verdict: Any = None                # the oracle's Verdict
    # Every finding's signature in this replay (the primary one first): a
    # divergence and the JIT self-check violation the same run shows, say.
    all_signatures: tuple[str, ...] = ()
    unstable: bool = False             # replays disagreed with each other
    engines: tuple[str, ...] = ("interp", "jit")   # what it was replayed on
    # The profile's kernel would not load it (the verifier model): ``PATH:LINE: prog NAME
    # insn N: reason``.  Not a divergence: it is neither replayed nor bucketed.
    refused: str | None = None
    # Signatures that explain the primary finding just as well (ambiguous what-if models).
    alternatives: tuple[str, ...] = ()

    @property
    def reproduces(self) -> bool:
        return self.signature is not None

    @property
    def size(self) -> tuple[int, int]:
        return self.scenario.size() if self.scenario is not None else (1 << 30, 1 << 30)

    def sort_key(self) -> tuple[int, int, str]:
        slots, events = self.size
        return slots, events, self.path.name


@dataclass
class Bucket:
    signature: str
    flaky: bool
    findings: list[FindingRecord] = field(default_factory=list)
    # Other primary signatures merged into this bucket because one replay showed both.
    related: list[str] = field(default_factory=list)
    minimized: Path | None = None          # the minimised reproducer, when asked for
    minimized_scenario: Scenario | None = None
    report: Path | None = None             # the Markdown report written for it

    @property
    def count(self) -> int:
        return len(self.findings)

    @property
    def reproducer(self) -> FindingRecord:
        return min(self.findings, key=FindingRecord.sort_key)

    @property
    def first_seen(self) -> float:
        return min(f.first_seen for f in self.findings)

    @property
    def best_scenario(self) -> Scenario | None:
        return self.minimized_scenario or self.reproducer.scenario

    def to_json(self) -> dict[str, Any]:
        rep = self.reproducer
        return {
            "signature": self.signature,
            "related": list(self.related),
            "count": self.count,
            "reproducer": str(self.minimized or rep.path),
            "original": str(rep.path),
            "flaky": self.flaky,
            "first_seen": _iso(self.first_seen),
            "size": {"slots": (self.best_scenario.size()[0] if self.best_scenario else None),
                     "events": (self.best_scenario.size()[1] if self.best_scenario else None)},
            "profile": rep.profile,
            "inject": sorted(rep.bugs),
            "engines": list(rep.engines),
            "files": [str(f.path) for f in sorted(self.findings, key=FindingRecord.sort_key)],
            "errors": sorted({f.error for f in self.findings if f.error}),
            "report": str(self.report) if self.report else None,
        }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def finding_files(crash_dir: str | os.PathLike[str]) -> list[Path]:
    """The findings of a crash directory: its top-level files that are not reports."""
    root = Path(crash_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    return sorted(
        p for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in NOT_FINDINGS
    )


def _first_seen(path: Path, meta: dict[str, str]) -> float:
    for key in ("found", "time", "first_seen"):
        raw = meta.get(key)
        if raw is None:
            continue
        try:
            return float(raw)
        except ValueError:
            pass
        try:
            return time.mktime(time.strptime(raw.rstrip("Z"), "%Y-%m-%dT%H:%M:%S")) - time.timezone
        except ValueError:
            pass
    return path.stat().st_mtime


def replay_finding(path: Path, *, profile: str | None = None, bugs: frozenset[str] | None = None,
                   engines: tuple[str, ...] | None = None, pool: Any = None, replays: int = 2) -> FindingRecord:
    """Load and replay one finding with the settings its meta records (or the environment's,
    for an atheris artifact; ``profile``/``bugs``/``engines`` override them:
    :func:`bpfdiff.settings.load_finding`).

    It is replayed ``replays`` times: a finding whose signature changes from
    one replay to the next is flaky even though it diverged.
    """
    from bpfdiff.fuzz.oracle import run_oracle

    from bpfdiff.inputs import load_input
    from bpfdiff.settings import SettingsError, byte_input_profile, resolve_settings

    try:
        scenario = load_input(path, profile=byte_input_profile(profile))
    except Exception as exc:  # noqa: BLE001 - an unreadable finding is reported, not raised
        return FindingRecord(path, None, profile or "?", bugs or frozenset(), None, None,
                             path.stat().st_mtime, error=_one_line(exc))
    meta = scenario.meta_dict
    try:
        settings = resolve_settings(scenario, profile=profile, inject=bugs, engines=engines, source=str(path))
    except SettingsError as exc:
        return FindingRecord(path, scenario, meta.get("profile", "?"), frozenset(), meta.get("signature"),
                             None, _first_seen(path, meta), error=_one_line(exc))
    record = FindingRecord(path, scenario, settings.profile, settings.bugs, meta.get("signature"), None,
                           _first_seen(path, meta), engines=settings.engines)
    from bpfdiff.profiles import get_profile
    from bpfdiff.verifier import refusal_line

    refused = refusal_line(str(path), scenario, get_profile(settings.profile))
    if refused is not None:
        record.refused = record.error = refused
        return record
    try:
        verdicts = [run_oracle(scenario, engines=settings.engines, profile=settings.profile, bugs=settings.bugs,
                               pool=pool) for _ in range(replays)]
    except Exception as exc:  # noqa: BLE001 - the oracle reports engine crashes itself; anything else is bad input
        record.error = f"{path}: replay failed: {_one_line(exc)}"
        return record
    verdict = verdicts[0]
    record.verdict = verdict
    seen = [v.signature if not v.ok else None for v in verdicts]
    if len(set(seen)) > 1:
        # Same input, same settings, different answers: the finding cannot be trusted to reproduce.
        record.error = f"{path}: unstable: replays gave {' / '.join(str(x) for x in seen)}"
        record.unstable = True
        return record
    # A known kernel bug's divergence that also shows a new finding (a JIT self-check failing
    # in the same run) is bucketed by the new one: the known bug is not what this input found.
    primary = primary_finding(verdict)
    record.signature = None if primary is None else primary.signature
    record.alternatives = tuple(getattr(primary, "alternatives", ())) if primary is not None else ()
    record.all_signatures = tuple(dict.fromkeys([record.signature] + [f.signature for f in verdict.findings])) \
        if primary is not None else ()
    return record


def primary_finding(verdict: Any) -> Any:
    """The finding a replay is bucketed by: the first new one (not a known kernel bug of the
    profile), else the first; None when the engines agree."""
    findings = list(getattr(verdict, "findings", ()) or ())
    if not findings:
        return None
    new = list(getattr(verdict, "new_findings", findings))
    return new[0] if new else findings[0]


def links_findings(signature: str) -> bool:
    """Whether two findings that both show ``signature`` are one bug.  Not a known kernel bug
    of the profile (many inputs show it beside whatever else they found), nor a failed
    text poke (the consequence of an earlier stale site, whatever made it stale)."""
    from bpfdiff.fuzz.oracle import KNOWN, is_consequence

    return not signature.startswith(f"{KNOWN}:") and not is_consequence(signature)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def bucket_findings(records: Iterable[FindingRecord], merge_related: bool = True) -> list[Bucket]:
    """Group findings by signature; non-reproducing ones into flaky buckets.

    With ``merge_related``, a JIT self-check (or crash) goes into the bucket of
    the divergence whose replays show it most often (e.g. a divergence through a
    stale direct jump and the self-check of that very poke site): symptoms one
    scenario exhibits together are one bug -- but two divergences are never
    merged through a self-check both show, a symptom two bugs can share.  Divergences that name the
    same mechanism (:func:`~bpfdiff.fuzz.oracle.divergence_mechanism`: a poke trigger, a self-check
    tag, a what-if model, else the one engine no model explains) are one bucket whether they
    showed in control or data fields.  A signature whose findings are all
    ambiguous (another what-if model explains each of them as well) joins the
    bucket of such an alternative that some finding shows unambiguously: the
    input could not tell the two apart, the other findings can.  The bucket is
    named after its most common primary signature; the others are listed as
    related.
    """
    records = list(records)
    groups: dict[tuple[str, bool], list[FindingRecord]] = {}
    for record in records:
        if record.reproduces:
            key = (str(record.signature), False)
        elif record.scenario is None:
            key = (UNREADABLE_SIGNATURE, True)
        elif record.unstable:
            key = (FLAKY_PREFIX + "unstable " + (record.recorded_signature or "replays"), True)
        else:
            key = (FLAKY_PREFIX + (record.recorded_signature or "no longer diverges"), True)
        groups.setdefault(key, []).append(record)
    parent = {sig: sig for sig, flaky in groups if not flaky}

    def root(sig: str) -> str:
        while parent[sig] != sig:
            parent[sig] = parent[parent[sig]]
            sig = parent[sig]
        return sig

    if merge_related:
        # Self-checks (and crashes) one replay shows together are tied; each set so tied joins
        # the divergence whose replays show it most often.  Two divergences are never tied
        # through a self-check both show: two bugs can share a symptom (a site jumping to the
        # wrong program after a skipped delete and after a skipped retarget alike).
        def divergence(sig: str) -> bool:
            return sig.startswith("divergence:")

        from bpfdiff.fuzz.oracle import divergence_mechanism

        same_mechanism: dict[tuple[str, str, str], str] = {}
        for sig, flaky in groups:
            mechanism = None if flaky else divergence_mechanism(sig)
            if mechanism is not None:
                first = same_mechanism.setdefault(mechanism, sig)
                if root(sig) != root(first):
                    parent[root(sig)] = root(first)

        for record in records:
            if record.reproduces:
                checks = [sig for sig in record.all_signatures if not divergence(sig) and links_findings(sig)]
                for sig in checks:
                    parent.setdefault(sig, sig)
                for a, b in zip(checks, checks[1:], strict=False):
                    if root(a) != root(b):
                        parent[root(b)] = root(a)
        votes: dict[str, Counter[str]] = {}
        for record in records:
            if record.reproduces and divergence(str(record.signature)):
                for sig in record.all_signatures:
                    if sig in parent and not divergence(sig) and links_findings(sig):
                        votes.setdefault(root(sig), Counter())[str(record.signature)] += 1
        for check, counts in votes.items():
            best = max(counts, key=lambda sig: (counts[sig], len(groups.get((sig, False), ())), sig))
            parent[root(check)] = root(best)
        plain = {str(r.signature) for r in records if r.reproduces and not r.alternatives}
        for (sig, flaky), members in groups.items():
            if flaky or not all(m.alternatives for m in members):
                continue
            choices = [alt for alt in members[0].alternatives if alt in plain and alt in parent]
            if choices:
                # the alternative most findings show unambiguously
                best = max(choices, key=lambda alt: len(groups[(alt, False)]))
                if root(sig) != root(best):
                    parent[root(sig)] = root(best)
    merged: dict[tuple[str, bool], list[tuple[str, list[FindingRecord]]]] = {}
    for (sig, flaky), members in groups.items():
        merged.setdefault((root(sig), False) if not flaky else (sig, True), []).append((sig, members))
    buckets = []
    for (_, flaky), parts in merged.items():
        # Name: the signature most findings have; divergences before violations and crashes on ties.
        # (a signature only ambiguous findings have never names a bucket it was joined to)
        # (a known kernel bug's signature names a bucket only of its own findings)
        parts.sort(key=lambda part: (part[0].startswith("known:"), all(m.alternatives for m in part[1]),
                                     -len(part[1]), not part[0].startswith("divergence"), part[0]))
        bucket = Bucket(signature=parts[0][0], flaky=flaky, related=[sig for sig, _ in parts[1:]])
        for _, members in parts:
            bucket.findings.extend(members)
        buckets.append(bucket)
    # Real bugs first, by how often they were hit; flaky ones after.
    return sorted(buckets, key=lambda b: (b.flaky, -b.count, b.first_seen, b.signature))


def triage(
    crash_dir: str | os.PathLike[str],
    *,
    minimize: bool = False,
    time_budget: float = 60.0,
    out_dir: str | os.PathLike[str] | None = None,
    engines: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
    merge_related: bool = True,
    profile: str | None = None,
    bugs: frozenset[str] | None = None,
    refused: list[str] | None = None,
) -> list[Bucket]:
    """Replay, bucket and (optionally) minimise every finding in ``crash_dir``.

    Findings the profile's kernel would not load go, one line each, to ``refused``
    when it is given (else they are reported like unreadable files).

    ``profile``/``bugs``/``engines`` override what each finding's meta records
    (needed for atheris artifacts, whose bytes record nothing; or set
    ``BPFDIFF_PROFILE`` / ``BPFDIFF_INJECT`` as for the harness).
    """
    pool = _make_pool()
    records = []
    files = finding_files(crash_dir)
    for n, path in enumerate(files, 1):
        record = replay_finding(path, profile=profile, bugs=bugs, engines=engines, pool=pool)
        if refused is not None and record.refused is not None:
            refused.append(record.refused)
            continue
        if progress is not None:
            state = "reproduces" if record.reproduces else (record.error or "does not reproduce (flaky)")
            progress(f"triage: [{n}/{len(files)}] {path.name}: {state}")
        records.append(record)
    buckets = bucket_findings(records, merge_related)
    if minimize:
        out = Path(out_dir) if out_dir is not None else Path(crash_dir) / "triage"
        for index, bucket in enumerate(buckets, 1):
            if bucket.flaky:
                continue
            _minimize_bucket(bucket, index, out, time_budget, pool, progress)
    return buckets


def _minimize_bucket(bucket: Bucket, index: int, out: Path, time_budget: float,
                     pool: Any, progress: Callable[[str], None] | None) -> None:
    from bpfdiff.fuzz.minimize import minimize_finding

    from bpfdiff.scenario_text import SUFFIX, write_scenario

    rep = bucket.reproducer
    assert rep.scenario is not None
    if progress is not None:
        progress(f"triage: minimising bucket {index} ({rep.path.name})")
    try:
        result = minimize_finding(rep.scenario, profile=rep.profile, bugs=rep.bugs, engines=rep.engines,
                                  time_budget=time_budget, progress=progress, pool=pool)
    except ValueError as exc:
        # e.g. the checker refuses a hand-written reproducer: keep it as it is, say why.
        rep.error = f"{rep.path}: not minimised: {exc}"
        if progress is not None:
            progress(f"triage: {rep.error}")
        return
    # minimize_finding keeps the reproducer's own signature by construction (one of the bucket's).
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bucket-{index}-{rep.path.stem}.min{SUFFIX}"
    write_scenario(path, result.scenario)
    bucket.minimized = path
    bucket.minimized_scenario = result.scenario


def _make_pool() -> Any:
    """The oracle's engine pool when it offers one (engines are reused across findings)."""
    from bpfdiff.fuzz import oracle

    factory = getattr(oracle, "EnginePool", None)
    return factory() if factory is not None else None


# --------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------
def format_table(buckets: list[Bucket]) -> str:
    """bucket | count | first seen | signature | reproducer, one row per bucket."""
    rows = [("bucket", "count", "first seen", "signature", "reproducer")]
    for index, bucket in enumerate(buckets, 1):
        label = f"{index}{' (flaky)' if bucket.flaky else ''}"
        signature = bucket.signature + (f" (+{len(bucket.related)} related)" if bucket.related else "")
        rows.append((label, str(bucket.count), _iso(bucket.first_seen), signature,
                     str(bucket.minimized or bucket.reproducer.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
             for row in rows]
    distinct = sum(1 for b in buckets if not b.flaky)
    flaky = sum(b.count for b in buckets if b.flaky)
    total = sum(b.count for b in buckets)
    lines.append(f"{total} findings, {distinct} distinct, {flaky} flaky")
    return "\n".join(lines)


def format_json(buckets: list[Bucket]) -> str:
    return json.dumps([b.to_json() for b in buckets], indent=2)
