"""CaseOps (`lossless_caps_caseops_v1`): the top records' reversible case transform of the text.

Capital ASCII letters become lowercase letters with private-use markers before them, so the
tokenizer needs no separate pieces for 'The', 'THE' and 'the' (docs/TTT_CASEOPS.md section F.1):

- a literal marker character (U+E001 to U+E004) in the text is escaped: ESC, then the character;
- every character that is not an ASCII letter (digits, whitespace, all non-ASCII, É and Σ too)
  is copied unchanged;
- a maximal run of ASCII letters: all lowercase unchanged; two or more capitals ALLCAPS + the
  run lowercased; a capital then lowercase letters TITLE + the run lowercased; otherwise
  (mixed case, a single capital) TITLE if the first letter is capital, then the lowercase
  letters with CAPNEXT before each later capital.

``decode`` is the exact inverse: it accepts only what ``encode`` can write and raises
``CaseOpsError`` on anything else (a dangling or doubled marker, a marker inside a word or
before a non-letter, a capital letter, an escape of an ordinary character), so
``encode(decode(text)) == text`` whenever decode returns. Standard library only.
"""

from __future__ import annotations

import re

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
CONTROLS = (TITLE, ALLCAPS, CAPNEXT, ESC)
"""The four control characters, in the order the tokenizer reserves them (ids 4 to 7)."""
CONTROL_UTF8_BYTES = 3  # each is a three-byte UTF-8 character

_TO_ESCAPE = re.compile("[\ue001-\ue004]")
_WORD = re.compile("[A-Za-z]+")
# One decoding step, left to right: an escaped control character; a marked word (TITLE or ALLCAPS,
# never right after a letter, i.e. never inside a word); a word holding CAPNEXT markers; or a
# character that no valid encoding holds unescaped here. Plain lowercase runs and every other
# character are not matched: they decode to themselves.
_STEP = re.compile(
    "\ue004([\ue001-\ue004])"
    "|(?<![a-z])([\ue001\ue002])([a-z](?:\ue003?[a-z])*+)"
    "|(?<![a-z])([a-z]++(?:\ue003[a-z]++)++)"
    "|([\ue001-\ue004A-Z])",
    re.DOTALL,
)
_CAPNEXT_LETTER = re.compile("\ue003([a-z])")


class CaseOpsError(ValueError):
    """Text that is not a CaseOps encoding (``decode`` refuses it)."""


def encode(text: str) -> str:
    """The CaseOps encoding of ``text``."""
    return _WORD.sub(lambda match: _encode_word(match.group()), _TO_ESCAPE.sub(lambda m: ESC + m.group(), text))


def _encode_word(word: str) -> str:
    if word.islower():
        return word
    lower = word.lower()
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if word[0].isupper() and word[1:].islower():
        return TITLE + lower
    marks = [CAPNEXT if letter.isupper() else "" for letter in word[1:]]
    head = TITLE if word[0].isupper() else ""
    return head + lower[0] + "".join(mark + letter for mark, letter in zip(marks, lower[1:]))


def decode(text: str) -> str:
    """The text whose encoding is ``text``; ``CaseOpsError`` when ``text`` is not one."""
    return _STEP.sub(lambda match: _decode_step(match, text), text)


def _decode_step(match: re.Match, text: str) -> str:
    escaped, marker, marked, capnext_word, stray = match.groups()
    if escaped is not None:
        return escaped
    if stray is not None:
        raise CaseOpsError(f"not a CaseOps encoding: {_describe(stray)} at character {match.start()} "
                           f"({_why_stray(stray, match.start(), text)})")
    if marker == ALLCAPS:
        decoded = marked.replace(CAPNEXT, "").upper()
    elif marker == TITLE:
        decoded = _apply_capnext(marked[0].upper() + marked[1:])
    else:
        decoded = _apply_capnext(capnext_word)
    if _encode_word(decoded) != match.group():  # e.g. ALLCAPS before one letter: encode writes TITLE
        raise CaseOpsError(f"not a CaseOps encoding: {match.group()!r} at character {match.start()} "
                           f"is not how {decoded!r} is encoded")
    return decoded


def _apply_capnext(word: str) -> str:
    return _CAPNEXT_LETTER.sub(lambda match: match.group(1).upper(), word)


def _describe(char: str) -> str:
    names = {TITLE: "TITLE", ALLCAPS: "ALLCAPS", CAPNEXT: "CAPNEXT", ESC: "ESC"}
    return names.get(char, f"capital {char!r}")


def _why_stray(char: str, at: int, text: str) -> str:
    if char not in CONTROLS:
        return "an encoding holds lowercase letters only"
    if char == ESC:
        return "an escape must be followed by a control character"
    following = text[at + 1 : at + 2]
    if not following:
        return "a marker must be followed by a letter, not the end of the text"
    if char != CAPNEXT and at and text[at - 1].isascii() and text[at - 1].isalpha():
        return "TITLE and ALLCAPS stand only at the start of a word"
    if char == CAPNEXT and not (at and text[at - 1].isascii() and text[at - 1].isalpha()):
        return "CAPNEXT stands only inside a word"
    return f"a marker must be followed by a lowercase letter, not {following!r}"

