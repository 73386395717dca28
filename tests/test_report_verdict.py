"""A triage report opens with one sentence saying what went wrong and in which engine,
then the reproducer and one timeline (each engine's outcome per event, the poke sites
whose bytes are not what the engine expects)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bpfdiff.fuzz.report import collect_report, render_markdown
from bpfdiff.fuzz.triage import triage
from raw_scenarios import raw_text  # test_oracle's scenarios run without a packet
from test_oracle import DELETE, SELF_LOOP_DIRECT

EXAMPLES = Path(__file__).resolve().parent.parent / "corpus" / "examples"


def report_of(tmp_path: Path, text: str, bug: str):
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    (crashes / "finding.scn").write_text(raw_text(text + f"-- meta\nprofile linux-6.1\ninject {bug}\n"))
    (bucket,) = triage(crashes)
    return collect_report(bucket, "Bucket 1")


def test_a_skipped_poke_is_named_by_the_site_that_kept_its_jump(tmp_path: Path) -> None:
    data = report_of(tmp_path, DELETE, "poke-skip-delete")
    assert data.verdict == ("After `delete jmp 1` (event 2) the direct tail-call site of caller (jmp[1], xlated pc 3) "
                            "in jit holds `jmp a+0xb` where `nop5` was expected: jit did not re-patch its direct "
                            "tail-call site when the slot was emptied; so at `run caller` (event 3) jit takes 1 tail "
                            "call where interp takes 0 tail calls.")
    rows = {row.index: row for row in data.timeline}
    assert [row.index for row in data.timeline if row.differs] == [3]
    assert rows[1].stale == [] and rows[3].outcomes == {"interp": "r0=0x1 tail_calls=0 trace caller",
                                                        "jit": "r0=0xa tail_calls=1 trace caller -> a"}
    assert rows[2].stale[0] == ("jit: direct tail-call site of caller (jmp[1], xlated pc 3)", "jmp a+0xb", "nop5")
    # every poke site after a map event, with its bytes and the bytes expected: the site still
    # holds its jmp rel32 (e9) where 6.1's nop5 (0f 1f 44 00 00, nopl 0x0(%rax,%rax,1)) belongs
    site = next(p for p in rows[2].pokes if p.site.startswith("jit: site of caller"))
    assert not site.ok and site.actual_bytes.startswith("e9 ") and site.expected_bytes == "0f 1f 44 00 00"
    assert rows[0].pokes and all(p.ok for p in rows[0].pokes)
    # after a run, only the sites that are wrong: none before the delete, the stale site after it
    assert rows[1].pokes == [] and site in rows[3].pokes and not any(p.ok for p in rows[3].pokes)
    text = render_markdown(data)
    # the sentence first, the reproducer before the details
    assert text.splitlines()[2] == f"**{data.verdict}**"
    assert text.index("## Scenario") < text.index("## Timeline") < text.index("## Divergence")


@pytest.mark.parametrize("bug,text,sentence", [
    ("tail-call-limit-ja", SELF_LOOP_DIRECT,
     "At `run loop` (event 1) jit takes 34 tail calls where interp takes 33 tail calls "
     "(as if MAX_TAIL_CALL_CNT were one higher)."),
    ("interp-tail-call-limit", SELF_LOOP_DIRECT,
     "At `run loop` (event 1) interp takes 32 tail calls where jit takes 33 tail calls "
     "(as if MAX_TAIL_CALL_CNT were one lower)."),
])
def test_a_counter_bug_is_named_by_its_engine_and_model(tmp_path: Path, bug: str, text: str, sentence: str) -> None:
    assert report_of(tmp_path, text, bug).verdict == sentence


def test_an_ambiguous_finding_joins_the_bucket_of_the_model_other_findings_show(tmp_path: Path) -> None:
    from bpfdiff.fuzz.oracle import run_oracle
    from test_oracle import SUBPROG_CHAIN, SUBPROG_CHAIN_TWO_HOPS, scenario

    # one tail call before the subprogram: a lost counter and a limit one higher look the same
    ambiguous = run_oracle(scenario(SUBPROG_CHAIN), bugs=frozenset({"tail-call-limit-ja"})).findings[0]
    assert ambiguous.signature == "divergence:linux-6.1:control:jit@subprog-reset:any"
    assert ambiguous.alternatives == ("divergence:linux-6.1:control:jit@limit+1:any",)
    for bug, other, name in [("tail-call-limit-ja", SELF_LOOP_DIRECT, "jit@limit+1"),
                             ("subprog-counter-reset", SUBPROG_CHAIN_TWO_HOPS, "jit@subprog-reset")]:
        crashes = tmp_path / bug
        crashes.mkdir()
        meta = f"-- meta\nprofile linux-6.1\ninject {bug}\n"
        (crashes / "a-ambiguous.scn").write_text(raw_text(SUBPROG_CHAIN + meta))
        (crashes / "b-plain.scn").write_text(raw_text(other + meta))
        (bucket,) = triage(crashes)
        assert bucket.signature == f"divergence:linux-6.1:control:{name}:any" and bucket.count == 2
        # without merging, the input that cannot tell the models apart stays apart
        assert len(triage(crashes, merge_related=False)) == (2 if bug == "tail-call-limit-ja" else 1)
