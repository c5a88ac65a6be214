"""The CaseOps transform (docs/TTT_CASEOPS.md F.1): examples, round trip, and decode as its exact inverse."""

import random

import pytest

from stages.data.caseops import ALLCAPS, CAPNEXT, CONTROLS, ESC, TITLE, CaseOpsError, decode, encode

# Characters a random text is drawn from: every kind the transform treats apart.
ALPHABET = (
    "abcxyzABCXYZ"  # ASCII letters of both cases
    "ÉéΣσİıßÆ"  # non-ASCII letters, capitals among them (copied unchanged)
    "0123456789"
    " \t\n\r  "  # whitespace, runs of it come from repeats
    "'-.,!"
    "\ue000\ue001\ue002\ue003\ue004\ue005\uf8ff"  # private use, the four controls among them
    "中😀"
)


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(ALPHABET) * rng.choice([1, 1, 1, 2, 5]) for _ in range(length))


@pytest.mark.parametrize(("text", "encoded"), [
    ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
    ("iPhone OpenAI", f"i{CAPNEXT}phone {TITLE}open{CAPNEXT}a{CAPNEXT}i"),
    ("McDONALD's", f"{TITLE}mc{CAPNEXT}d{CAPNEXT}o{CAPNEXT}n{CAPNEXT}a{CAPNEXT}l{CAPNEXT}d's"),
    ("A b", f"{TITLE}a b"),
    ("ÉCOLE Σ", f"É{ALLCAPS}cole Σ"),
    (f"x{TITLE}y{ESC}", f"x{ESC}{TITLE}y{ESC}{ESC}"),
])
def test_examples_of_the_spec(text, encoded):
    assert encode(text) == encoded
    assert decode(encoded) == text


def test_round_trip_on_random_unicode():
    rng = random.Random(1729)
    for _ in range(3000):
        text = random_text(rng, rng.randint(0, 40))
        assert decode(encode(text)) == text, repr(text)


def test_encoding_holds_no_capital_and_no_unescaped_literal_control():
    rng = random.Random(7)
    for _ in range(500):
        text = random_text(rng, 30)
        encoded = encode(text)
        assert not any("A" <= char <= "Z" for char in encoded)
        assert len(encoded) - len(text) == sum(encoded.count(c) for c in CONTROLS) - sum(text.count(c) for c in CONTROLS)


def test_decode_accepts_exactly_the_encodings():
    """Random strings of letters and markers: decode either refuses one or is the inverse of encode
    on it, so no two texts share an encoding and every accepted string is one."""
    rng = random.Random(2026)
    accepted = refused = 0
    for _ in range(20000):
        candidate = "".join(rng.choice("ab " + "".join(CONTROLS)) for _ in range(rng.randint(1, 8)))
        try:
            text = decode(candidate)
        except CaseOpsError:
            refused += 1
            continue
        accepted += 1
        assert encode(text) == candidate, repr(candidate)
    assert accepted > 1000 and refused > 1000


@pytest.mark.parametrize(("encoded", "why"), [
    (TITLE, "not the end of the text"),
    (f"{ALLCAPS} ab", "lowercase letter, not ' '"),
    (f"{TITLE}{TITLE}ab", "lowercase letter"),
    (f"ab{TITLE}c", "only at the start of a word"),
    (f"{CAPNEXT}ab", "only inside a word"),
    (f"a{CAPNEXT}{TITLE}b", "lowercase letter"),
    (f"ab{CAPNEXT}", "not the end of the text"),
    (f"{ESC}a", "escape must be followed by a control character"),
    (ESC, "escape must be followed"),
    ("aBc", "lowercase letters only"),
    (f"{ALLCAPS}a", "is not how 'A' is encoded"),
    (f"{TITLE}a{CAPNEXT}b", "is not how 'AB' is encoded"),
    (f"{ALLCAPS}a{CAPNEXT}b", "is not how 'AB' is encoded"),
])
def test_malformed_encodings_are_refused(encoded, why):
    with pytest.raises(CaseOpsError, match=f"not a CaseOps encoding: .*{why}"):
        decode(encoded)
