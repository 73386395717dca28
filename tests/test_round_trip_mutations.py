"""``parse(format(s)) == s`` for everything the parser accepts, not only for generated scenarios.

A line- and token-level mutator starts from the bundled examples and seeds
(plus a few texts using every section) and deletes, duplicates, swaps and
inserts lines, and replaces, deletes and duplicates tokens, drawing new lines
and tokens from the corpus itself and from a list of awkward ones.  Whatever
the parser accepts must be written back by the printer without an error and
read back as the same scenario -- or a finding's file could not be rewritten
by ``minimize``, ``triage`` or ``fuzz --corpus``.  Hypothesis runs a bounded,
derandomised number of examples, so the suite stays fast and repeatable.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfdiff.scenario_text import ScenarioSyntaxError, format_scenario, parse_scenario

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

EXTRA_TEXTS = [
    """-- maps
h hash key_size=8 value_size=16 max_entries=3
a array value_size=8 max_entries=2
t prog_array max_entries=4
-- prog p raw
0x00000001000000b7 # mov r0, 1
0x0000000000000018 map:t
0x0000000000000000
0x0000000000000095
-- prog q
lddw %r1, map_value:a+4
lddw %r2, map:h
mov %r0, 0
exit
-- events
update h hex:0102030405060708 = 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f flags=noexist
update a 1 = 01 02 03 04 05 06 07 08 flags=7
update t 0 prog:q
delete h 5
load p
run q mem=01 02 03
""",
    """# leading comment
-- prog only   # a comment after the name
  mov32 %r0, -1   # trailing
  exit
-- result
-0x1
-- error
a fault
second line
""",
    """-- prog a
exit
-- meta
profile linux-5.5
inject poke-skip-delete
""",
]

AWKWARD_LINES = [
    "", "   ", "#", "# c", "--", "-- ", "-- meta", "-- error", "-- result", "-- events", "-- maps",
    "-- prog x", "-- prog x raw", "-- prog", "-x 1", "--inject foo", "--x", "key", "key value with  spaces",
    "profile linux-6.1", "run a", "load a", "exit", "mov %r0, 0", "0x0000000000000095", "  0x1", "a: exit",
    "x\x0cy", "x\u2028y", "x\ry", "\ufeff-- maps", "m hash key_size=1 max_entries=1", "0", "-5",
    "update t 0 prog:a", "update m 0 =", "delete m hex:", "run a mem=", "ja +0", "call 12",
]
AWKWARD_TOKENS = [
    "0", "1", "-1", "0x", "0x0", "00", "0b1", "1_0", "+3", "-0", "0x" + "f" * 20, "9" * 30, "hex:", "hex:0",
    "hex:0a", "prog:", "prog:a", "=", "flags=7", "flags=exist", "flags=", "mem=", "mem=0", "#", "map:", "map:t",
    "%r10", "%r11", "r1", "key_size=0", "key_size=4", "value_size=8", "max_entries=65536", "max_entries=1",
    "raw", "-", "--", "\t", "é", "x#y", "a", "b", "exit", "[%r1+2]", "lock", "*",
]


def _sources() -> list[str]:
    paths = sorted(CORPUS.glob("examples/*.scn")) + sorted(CORPUS.glob("seeds/*"))
    texts = [p.read_text() for p in paths if p.is_file()]
    assert texts, "the corpus is gone"
    return texts + EXTRA_TEXTS


SOURCES = _sources()
LINE_POOL = sorted({line for text in SOURCES for line in text.splitlines()} | set(AWKWARD_LINES))
TOKEN_POOL = sorted({tok for text in SOURCES for tok in text.split()} | set(AWKWARD_TOKENS))


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    # the hand-made texts hold every section: drawn as often as the whole corpus
    lines = draw(st.sampled_from(draw(st.sampled_from([SOURCES, EXTRA_TEXTS])))).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "token", "token-delete",
                                   "token-duplicate", "join", "into-section"]))
        if not lines:
            lines = [draw(st.sampled_from(LINE_POOL))]
            continue
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            # at the end too (where `-- meta` usually is), awkward lines as often as corpus ones
            pool = draw(st.sampled_from([LINE_POOL, AWKWARD_LINES]))
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(pool)))
        elif op == "into-section":
            # an awkward line as the first of a section: every section's reader meets every oddity
            headers = [n for n, line in enumerate(lines) if line.startswith("-- ")] or [i]
            lines.insert(draw(st.sampled_from(headers)) + 1, draw(st.sampled_from(AWKWARD_LINES)))
        elif op == "join" and i + 1 < len(lines):
            lines[i:i + 2] = [lines[i] + draw(st.sampled_from([" ", "", "\t"])) + lines[i + 1]]
        else:
            tokens = lines[i].split(" ")
            k = draw(st.integers(0, len(tokens) - 1))
            if op == "token":
                tokens[k] = draw(st.sampled_from(draw(st.sampled_from([TOKEN_POOL, AWKWARD_TOKENS]))))
            elif op == "token-delete":
                del tokens[k]
            else:
                tokens.insert(k, tokens[k])
            lines[i] = " ".join(tokens)
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


def _check_round_trip(text: str) -> bool:
    """True when the parser accepted ``text`` (and then the round trip held)."""
    try:
        scenario = parse_scenario(text, "<mutant>")
    except ScenarioSyntaxError:
        return False
    written = format_scenario(scenario)          # must not raise: the parser accepted it
    again = parse_scenario(written, "<written>")
    assert again == scenario, (text, written)
    assert format_scenario(again) == written
    return True


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_texts())
def test_every_accepted_mutant_round_trips(text: str) -> None:
    _check_round_trip(text)


def test_the_mutator_reaches_both_sides() -> None:
    """The property is not vacuous: the mutants include accepted and refused texts (checked without hypothesis)."""
    import random

    rng = random.Random(12)
    accepted = refused = 0
    for _ in range(300):
        lines = rng.choice(SOURCES).splitlines()
        for _ in range(rng.randint(1, 3)):
            if lines and rng.random() < 0.5:
                del lines[rng.randrange(len(lines))]
            else:
                lines.insert(rng.randrange(len(lines) + 1), rng.choice(LINE_POOL))
        if _check_round_trip("\n".join(lines) + "\n"):
            accepted += 1
        else:
            refused += 1
    assert accepted > 30 and refused > 30, (accepted, refused)


def test_known_breakers_are_refused_or_round_trip() -> None:
    """The texts issue 12 reported: the parser accepted them and the writer could not write them back."""
    prog = "-- prog a\nmov %r0, 1\nexit\n"
    for text in (f"{prog}-- meta\n-x 1\n", f"{prog}-- meta\n--\n", f"{prog}-- meta\n--inject foo\n",
                 "-- maps\nh hash key_size=0x" + "f" * 4000 + " max_entries=1\n" + prog):
        assert not _check_round_trip(text), text
